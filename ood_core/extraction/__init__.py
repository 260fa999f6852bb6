"""Extraction: one batched pass per set (arrays.py), the orchestrator over every set and its store
(orchestrator.py, store.py), Wu et al.'s subspaces, the ODIN / GRODIN grid and torchrun ranks.
"""
