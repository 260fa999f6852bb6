"""Evaluation: tuning on validation parts, the benchmark over every method, metrics, paired
bootstrap statistics, seed aggregation and the cuts a profile makes.
"""
