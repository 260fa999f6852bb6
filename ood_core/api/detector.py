"""One method at a time, pytorch-ood style: fit on ID training data, then score any batch.

    from ood_core.api.detector import Detector
    detector = Detector("energy", model).fit(train_images)
    s = detector.score(x)        # higher = more in-distribution (the study's sign)
    o = detector.predict(x)      # = -score: higher = more OOD (pytorch-ood's sign)

The parameters are fixed (the registry's defaults, or given as keywords: ``Detector("odin", model,
T=1000.0, eps=0.0014)``); :func:`ood_core.api.evaluation.evaluate` tunes them on validation parts instead.
Same extraction and score functions as the study.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from ood_core.api.evaluation import Config, as_preprocess, study_settings
from ood_core.api.inputs import as_source
from ood_core.api.own_model import as_ood_model, check_head
from ood_core.data.sources import BatchSource, Preprocess
from ood_core.extraction.arrays import Subspace, head_arrays
from ood_core.extraction.orchestrator import LOWDIM_PREFIX, extract_one, extract_settings, fit_subspaces
from ood_core.grads.per_sample import check_method
from ood_core.scores import registry


class Detector:
    """One registered method (``ood_core.scores.registry.names()``) on one model.

    Args:
        method: the method's name, e.g. ``"energy"``, ``"knn"``, ``"grodin_g"``, ``"lowdim_knn"``.
        model: a classifier ending in an ``nn.Linear`` (see :func:`ood_core.api.evaluation.evaluate` for
            ``head`` / ``features``).
        config: the settings (:func:`ood_core.api.evaluation.study_settings`): batch sizes, the low-dim subspaces.
        preprocess: how uint8 images become inputs (``Preprocess`` or a mapping of its fields).
        device: where the model runs. grad_method: ``"hooks"`` or ``"vmap"`` (any layer type; see
            :func:`ood_core.api.evaluation.evaluate`).
        **params: the method's parameters (default: its registered defaults, ``.params``); a grid
            method takes one ``T`` and one ``eps``.
    """

    def __init__(
        self,
        method: str,
        model: torch.nn.Module,
        *,
        config: Config = None,
        preprocess: Preprocess | Mapping[str, Any] | None = None,
        head: str | torch.nn.Linear | None = None,
        features: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
        grad_method: str = "hooks",
        **params: Any,
    ):
        self.spec = registry.get(method)
        unknown = set(params) - set(self.spec.defaults)
        if unknown:
            raise TypeError(f"{method}: unknown parameter(s) {sorted(unknown)}; it takes {sorted(self.spec.defaults)}")
        self.method = method
        self.params: dict[str, Any] = {**self.spec.defaults, **params}
        self.cfg = study_settings(config)
        if self.spec.uses_grid:  # one grid cell: the given T and eps
            self.cfg["extract"]["odin_T"] = [float(self.params["T"])]
            self.cfg["extract"]["odin_eps"] = [float(self.params["eps"])]
        self.needs = set(self.spec.inputs(self.params))
        self.extract_cfg = extract_settings(self.cfg["extract"], self.needs)
        self.pre = as_preprocess(preprocess, self.cfg, config)
        self.device = torch.device(device)
        check_method(grad_method)
        self.grad_method = grad_method
        self.model = as_ood_model(model, head=head, features=features).eval().to(self.device)
        self._head = head_arrays(self.model)
        self.subspaces: list[Subspace] = []
        self.state: Any = None
        self.fitted = False

    def __repr__(self) -> str:
        return f"Detector({self.method!r}, params={self.params}, fitted={self.fitted})"

    def _arrays(self, source: BatchSource, *, is_ood: bool) -> dict[str, np.ndarray]:
        res = extract_one(
            self.model,
            source,
            self.cfg,
            self.extract_cfg,
            self.device,
            role="ood" if is_ood else "train",
            subspaces=self.subspaces,
            input_std=None if self.pre is None else self.pre.std,
            desc=f"{self.method}: {source.name}",
            grad_method=self.grad_method,
        )
        return {**res.arrays, **self._head}

    def fit(self, train: Any) -> Detector:
        """Fit the method's training statistics (and its low-dim subspace) on ID training data with
        labels 0..C-1 (the types :func:`ood_core.api.evaluation.evaluate` accepts). Returns ``self``."""
        source = as_source(train, name="train", preprocess=self.pre)
        probe, _ = next(iter(source.batches(2, self.device)))
        check_head(self.model, probe)  # once: the model does not change between fit and score
        lowdim = sorted(k[len(LOWDIM_PREFIX) :] for k in self.needs if k.startswith(LOWDIM_PREFIX))
        if lowdim:
            self.subspaces, _ = fit_subspaces(
                self.model,
                source,
                self.cfg,
                lowdim[:1],
                num_classes=int(self.model.head.out_features),
                device=self.device,
                grad_method=self.grad_method,
            )
        if self.spec.fit is not None:
            self.state = registry.fit(self.method, self._arrays(source, is_ood=False), **self.params)
        self.fitted = True
        return self

    def score(self, data: Any) -> np.ndarray:
        """Scores (N,) float64 of ``data`` (a batch tensor (N, C, H, W), or any input
        :func:`ood_core.api.evaluation.evaluate` accepts), higher = more in-distribution."""
        if not self.fitted:
            raise RuntimeError(f"Detector({self.method!r}): call .fit(train) before .score()")
        source = as_source(data, name="input", preprocess=self.pre)
        return registry.compute(self.method, self._arrays(source, is_ood=True), self.state, **self.params)

    def predict(self, data: Any) -> np.ndarray:
        """Outlier scores, pytorch-ood's sign: ``-score(data)``, higher = more OOD."""
        return -self.score(data)
