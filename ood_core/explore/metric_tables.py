"""Pivots of the benchmark's ``metrics.csv`` that the notebooks show (04: the Igoe family table;
05: the method x OOD set heatmap). Methods appear under their registered display names
(:func:`ood_core.scores.display_name`); ``metrics.csv`` keeps the code names.
"""

from __future__ import annotations

import pandas as pd

from ood_core.analysis_cache import AnalysisCache, to_markdown
from ood_core.evaluation.tuning import base_protocol
from ood_core.explore.session import ood_order
from ood_core.scores import display_name
from ood_core.scores.registry import FAMILIES


def headline_rows(mdf: pd.DataFrame) -> pd.DataFrame:
    """The rows of the headline protocol: the first protocol of ``metrics.csv`` (the benchmark writes
    it first; ``benchmark.protocol``); all rows when the file has no protocol column."""
    if "protocol" not in mdf.columns or mdf.empty:
        return mdf
    base = mdf["protocol"].astype(str).map(base_protocol)
    return mdf[base == base.iloc[0]]


def pivot(mdf: pd.DataFrame, ood_names: list[str], metric: str = "auroc") -> pd.DataFrame:
    """method x OOD set of ``metric`` under the headline protocol (:func:`headline_rows`; mean over
    duplicate rows), OOD sets in meta order (others after, sorted), plus a ``mean`` column over the sets."""
    mdf = headline_rows(mdf)
    tab = mdf.pivot_table(index="method", columns="ood_set", values=metric, aggfunc="mean")
    tab = tab[ood_order(mdf["ood_set"], ood_names)]
    tab.columns.name = None
    return tab.assign(mean=tab.mean(axis=1))


def with_display_names(tab: pd.DataFrame) -> pd.DataFrame:
    """``tab`` with its method index shown by display names (index name 'method')."""
    out = tab.set_axis([display_name(m) for m in tab.index], axis=0)
    out.index.name = "method"
    return out


def family_table(
    mdf: pd.DataFrame, ood_names: list[str], family: str = "decomposition", metric: str = "auroc"
) -> pd.DataFrame:
    """:func:`pivot` of the rows of ``family``, best mean first, display names; empty when none."""
    rows = mdf[mdf["family"] == family]
    if rows.empty:
        return pd.DataFrame()
    return with_display_names(pivot(rows, ood_names, metric).sort_values("mean", ascending=False))


def family_markdown(tab: pd.DataFrame, cache: AnalysisCache) -> str:
    """The Igoe family table with its caption (``igoe_family_table.md``)."""
    return (
        f"AUROC (ID = {cache.id_name}, model = {cache.meta.get('model')}) of the non-gradient family "
        f"(feature term x output term; rows of metrics.csv with family == 'decomposition').\n\n"
        + to_markdown(tab, floatfmt=".3f")
    )


def methods_table(mdf: pd.DataFrame, methods: list[str], ood_names: list[str], metric: str = "auroc") -> pd.DataFrame:
    """method x OOD set of the given ``methods`` (display names, no mean); empty when none is present."""
    rows = mdf[mdf["method"].isin(methods)]
    if rows.empty:
        return pd.DataFrame()
    return with_display_names(pivot(rows, ood_names, metric).drop(columns="mean"))


def families(mdf: pd.DataFrame) -> dict[str, str]:
    """{method: family} from ``metrics.csv``."""
    return mdf.drop_duplicates("method").set_index("method")["family"].to_dict()


def heatmap_table(
    mdf: pd.DataFrame, cache: AnalysisCache, metric: str = "auroc", methods: list[str] | None = None
) -> pd.DataFrame:
    """method x OOD set of ``metric`` with a ``mean`` column; near sets before far ones (meta order
    within a group); rows: ``methods`` in the given order, else grouped by family (registry order) with
    the best mean first within a family. Code names as index."""
    ood = cache.ood_names
    sets = sorted(
        ood_order(mdf["ood_set"], ood), key=lambda o: (cache.group(o) != "near", ood.index(o) if o in ood else len(ood))
    )
    tab = pivot(mdf, ood, metric)[[*sets, "mean"]]
    if methods:
        return tab.loc[[m for m in methods if m in tab.index]]
    fam, rank = families(mdf), {f: i for i, f in enumerate(FAMILIES)}
    return (
        tab.assign(_f=[rank.get(fam.get(m, ""), len(rank)) for m in tab.index])
        .sort_values(["_f", "mean"], ascending=[True, False])
        .drop(columns="_f")
    )
