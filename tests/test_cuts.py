"""A profile's cuts (ood_core/evaluation/cuts.py) are read from the profile and written into reference.md."""

from __future__ import annotations

from ood_core.config import load_profile
from ood_core.evaluation.cuts import profile_cuts
from ood_core.reporting.reference_compare import reference_markdown


def test_cifar10_cuts_name_every_cut_of_the_cpu_profile():
    cuts = profile_cuts(load_profile("cifar10"))
    text = "\n".join(cuts)
    assert "`train`: a seeded subset of 10,000 rows" in cuts
    assert "`tinyimagenet`: a seeded subset of 2,000 rows" in cuts
    assert not any("dtd10" in c for c in cuts), "dtd10 keeps all its rows"
    assert "ODIN/GRODIN grid of 4 T x 3 eps (GRODIN's: 10 x 21)" in cuts
    assert "fitted on 1,500 training rows" in text
    assert "subspace `pca`: K = 50, 2 power iterations (Wu et al.: 10)" in cuts
    assert not any("`avg`" in c for c in cuts), "the class-mean subspace has no power iterations"


def test_the_full_profile_keeps_only_the_selected_cells_note():
    cuts = profile_cuts(load_profile("cifar10_full"))
    assert len(cuts) == 1 and "selected" in cuts[0]


def test_reference_md_lists_the_cuts():
    md = reference_markdown([], id_dataset="cifar10", model="m", protocol="p", cuts=["cut one", "cut two"])
    assert "## Cuts of this run" in md and "- cut one\n- cut two" in md
    assert "## Cuts" not in reference_markdown([], id_dataset="cifar10", model="m", protocol="p")
