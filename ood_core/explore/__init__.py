"""The logic behind the notebooks' figures, one module per figure family (the notebooks only call it).

==================  ==========  ============================================================
module              notebook    figure
==================  ==========  ============================================================
session             all         :class:`Session` (cache, fig_dir, seeded rng, saving), ``note``
tsne                01          t-SNE of features vs low-dim gradients (Wu et al., Fig. 2)
densities           02          per-dimension densities, one ID vs one OOD sample (Wu et al., Figs. 3-4)
sg_band             03          GRODIN's S x G decomposition in the hard band of S (GRODIN, Fig. 2)
calibration         03          reliability curves and ECE across temperatures
factorisation       04          GradNorm / ExGrad = feature term x output term; the simplex (Igoe et al.)
deep_vs_last        04          all-weights gradients vs their last-layer closed forms (Igoe et al.)
metric_tables       04, 05      pivots of metrics.csv (Igoe family table, heatmap rows)
benchmark_figures   05          ODIN/GRODIN, KNN, ReAct sweeps; compute cost; AUROC heatmap
==================  ==========  ============================================================

Everything here reads the analysis cache (:class:`ood_core.analysis_cache.AnalysisCache`) and the
benchmark's tables; scores come from the registry (:mod:`ood_core.scores`), metrics from
:mod:`ood_core.evaluation.metrics`, the figure style from :mod:`ood_core.reporting.style`.
"""

from ood_core.explore.session import Session, note  # noqa: F401
