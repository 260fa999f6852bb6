"""How our OOD sets map onto the sets of published numbers (``reference.md``'s "Set mapping")."""

from __future__ import annotations

SET_MAP: dict[str, list[tuple[str, str, str]]] = {
    "tinyimagenet": [
        (
            "TIN",
            "comparable",
            "same source (TinyImageNet); image list/val-test split may differ (OpenOOD removes classes "
            "overlapping CIFAR-10 and keeps 7,793 images; GRODIN uses 500/9500)",
        ),
        ("near", "partial", "OpenOOD near = mean(CIFAR-100, TIN); CIFAR-100 is absent here, so ours is TIN only"),
    ],
    "mnist": [
        ("MNIST", "comparable", "same source; OpenOOD uses 70,000 images resized to 32x32"),
        (
            "far",
            "partial",
            "OpenOOD far = mean(MNIST, SVHN, Textures, Places365); only MNIST (+ partial Textures) here",
        ),
    ],
    "dtd10": [
        (
            "Textures",
            "not comparable",
            "dtd10 is a partial Textures (DTD) subset; published numbers use the full DTD (5,640 images)",
        ),
        ("far", "partial", "OpenOOD far = mean(MNIST, SVHN, Textures, Places365); only MNIST + partial Textures here"),
    ],
}

ABSENT_SETS = ("SVHN", "LSUN", "iSUN", "Places365", "CIFAR-100")
ABSENT_NOTE = (
    "Absent here (no counterpart for those published numbers): SVHN, LSUN, iSUN, Places365, CIFAR-100; "
    "the ImageNet-scale suites (iNaturalist/SUN/Places/Textures, ImageNet-O/R/A/C) only apply to an "
    "ImageNet profile."
)


def our_sets_for(their_set: str, available: list[str]) -> list[tuple[str, str, str]]:
    """Our sets (among ``available``) that map to ``their_set`` with comparability and note."""
    out = []
    for ours in available:
        for theirs, comp, note in SET_MAP.get(ours, []):
            if theirs == their_set:
                out.append((ours, comp, note))
    return out
