"""One progress display per stage: every pass of the stage reports into one object that knows the
stage's whole work up front (units = images x passes), so it can show the current pass, the rate
and the ETA of the whole stage.

On a terminal the display is one tqdm bar; when the output goes to a file or a pipe (``nohup ... >
log 2>&1``, ``analysis.run``'s stage logs) it is one plain line every ``every`` seconds (time stamp,
pass, done / total, rate, ETA), never a carriage return. ``OOD_PROGRESS`` (``bar``, ``lines``, ``off``)
and ``OOD_PROGRESS_SECONDS`` override the choice and the interval.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TextIO, TypeVar

Batch = TypeVar("Batch", bound=Sequence[Any])

MODE_ENV = "OOD_PROGRESS"
SECONDS_ENV = "OOD_PROGRESS_SECONDS"
MODES = ("bar", "lines", "off")
DEFAULT_SECONDS = 30.0


def format_duration(seconds: float) -> str:
    """``3 h 05 min``, ``12 min 40 s``, ``8 s``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _mode(stream: TextIO, mode: str | None) -> str:
    mode = mode or os.environ.get(MODE_ENV) or ("bar" if _isatty(stream) else "lines")
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV} must be one of {MODES}, got {mode!r}")
    return mode


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class StageProgress:
    """Progress of one stage over ``total`` units. ``begin(name)`` names the pass now running,
    ``update(n)`` counts finished units, ``note(line)`` prints a line (an epoch's loss) without
    breaking the display, ``close()`` ends it. ``clock`` / ``stamp`` are injectable for tests."""

    def __init__(
        self,
        stage: str,
        total: int,
        *,
        unit: str = "img",
        stream: TextIO | None = None,
        mode: str | None = None,
        every: float | None = None,
        leave: bool = True,
        clock: Callable[[], float] = time.monotonic,
        stamp: Callable[[], str] = lambda: time.strftime("%Y-%m-%d %H:%M:%S"),
    ) -> None:
        self.stage, self.total, self.unit, self.done = stage, int(total), unit, 0
        self.stream = stream if stream is not None else sys.stderr
        self.mode = _mode(self.stream, mode)
        self.every = float(every if every is not None else os.environ.get(SECONDS_ENV, DEFAULT_SECONDS))
        self.leave, self.clock, self.stamp = leave, clock, stamp
        self.pass_name = ""
        self.lines_written = 0
        self._t0 = clock()
        self._last_line = self._t0
        self._closed = False
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=stage, unit=unit, file=self.stream, leave=leave, mininterval=1.0)

    # -- what the passes call
    def begin(self, name: str) -> None:
        """Name the pass now running ("subspace pca: power iteration 2/3", "extract mnist")."""
        self.pass_name = name
        if self._bar is not None:
            self._bar.set_description_str(f"{self.stage}: {name}", refresh=False)

    def update(self, n: int) -> None:
        """``n`` more units done."""
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(int(n))
        elif self.mode == "lines" and self.clock() - self._last_line >= self.every:
            self._write(self.line())

    def counted(self, batches: Iterable[Batch], per_row: int = 1) -> Iterator[Batch]:
        """``batches`` passed through; each counts ``len(batch[0]) * per_row`` units once its
        loop body has run (when the next batch is asked for)."""
        for batch in batches:
            yield batch
            self.update(len(batch[0]) * per_row)

    def each(self, items: Iterable[Any], label: Callable[[Any], str] = str) -> Iterator[Any]:
        """``items`` passed through, one unit each: the pass named ``label(item)`` while its loop body
        runs, counted when the next item is asked for; the display closes after the last."""
        for item in items:
            self.begin(label(item))
            yield item
            self.update(1)
        self.close()

    def add_total(self, n: int) -> None:
        """Revise the total by ``n`` units (negative: work that turned out not to be needed)."""
        self.total += int(n)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def note(self, text: str) -> None:
        """Print ``text`` as its own line (between bar updates on a terminal)."""
        if self.mode == "off":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self._write(text, progress=False)

    def close(self) -> None:
        """End the display; in line mode a last line when the stage wrote any (or ``leave``)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and (self.leave or self.lines_written):
            self._write(self.line(final=True))

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- what it shows
    @property
    def elapsed(self) -> float:
        return self.clock() - self._t0

    def rate(self) -> float:
        """Units per second since the stage began."""
        t = self.elapsed
        return self.done / t if t > 0 else 0.0

    def eta(self) -> float:
        """Seconds left for the whole stage at the rate so far (inf before the first unit)."""
        r = self.rate()
        return max(self.total - self.done, 0) / r if r > 0 else math.inf

    def line(self, final: bool = False) -> str:
        """One plain progress line: time stamp, stage, pass, done / total, rate, elapsed, ETA."""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        head = f"[{self.stage}] {self.stamp()}"
        count = f"{self.done:,}/{self.total:,} {self.unit} ({pct:.1f}%)"
        rate = f"{self.rate():.1f} {self.unit}/s"
        if final:
            return f"{head} done: {count} in {format_duration(self.elapsed)}, {rate}"
        where = f" {self.pass_name}:" if self.pass_name else ""
        return (
            f"{head}{where} {count}, {rate}, elapsed {format_duration(self.elapsed)}, ETA {format_duration(self.eta())}"
        )

    def _write(self, text: str, progress: bool = True) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        if progress:
            self._last_line = self.clock()
            self.lines_written += 1


def pass_display(progress: StageProgress | None, name: str, total: int, unit: str = "img") -> StageProgress:
    """``progress`` with pass ``name`` begun, or (None: a library caller) a display of this pass
    alone; end it with :func:`end_pass` (which closes only a display made here)."""
    if progress is not None:
        progress.begin(name)
        return progress
    return StageProgress(name, total, unit=unit, leave=False)


def end_pass(shown: StageProgress, progress: StageProgress | None) -> None:
    """Close ``shown`` when :func:`pass_display` made it for this pass alone."""
    if shown is not progress:
        shown.close()


# --------------------------------------------------------------------------- the extract stage's work
def subspace_passes(spec: Mapping[str, Any]) -> int:
    """Passes over the training rows of one subspace fit (whitening statistics not counted):
    a PCA's randomized SVD makes 2 + 2 n_iter, a class-mean subspace 1."""
    if spec["kind"] == "pca":
        return 2 + 2 * int(spec.get("n_iter", 10))
    return 1


@dataclass
class ExtractPlan:
    """The work of one extract run, in images: ``subspace_rows[name]`` = rows x passes of each
    subspace to fit (``stats_rows``: the whitening statistics' passes), ``main_rows[set]`` the rows of
    each set's pass, ``grid_units[set]`` = rows x cells of its ODIN / GRODIN grid (an upper bound
    under ``grodin_test_points: selected``: every cell counted on the test rows)."""

    subspace_rows: dict[str, int] = field(default_factory=dict)
    stats_rows: int = 0
    main_rows: dict[str, int] = field(default_factory=dict)
    grid_units: dict[str, int] = field(default_factory=dict)

    def test_cells_planned(self, name: str, n_test: int, cells: int) -> int:
        """The grid units counted for set ``name``'s ``n_test`` test rows (0: its grid was stored)."""
        return n_test * cells if name in self.grid_units else 0

    @property
    def units(self) -> int:
        return (
            self.stats_rows
            + sum(self.subspace_rows.values())
            + sum(self.main_rows.values())
            + sum(self.grid_units.values())
        )


def plan_extract(
    sizes: Mapping[str, int],
    roles: Mapping[str, str],
    *,
    grid_cells: int,
    subspaces_to_fit: Sequence[tuple[str, Mapping[str, Any], str, bool]] = (),
    fit_rows: int = 0,
) -> ExtractPlan:
    """The :class:`ExtractPlan` of sets ``sizes`` (rows of each set to compute; ``roles``: "train"
    or another role) under a grid of ``grid_cells`` cells (0: no grid; every cell on every row of a
    scored set, revised once cells are selected). ``subspaces_to_fit``: (name, spec, params key,
    whitening statistics needed) in fitting order; ``fit_rows``: the training rows a fit streams."""
    plan = ExtractPlan()
    for name, spec, _params, needs_stats in subspaces_to_fit:
        plan.subspace_rows[name] = fit_rows * subspace_passes(spec)
        plan.stats_rows += fit_rows if needs_stats else 0
    for name, n in sizes.items():
        plan.main_rows[name] = n
        if roles[name] != "train" and grid_cells:
            plan.grid_units[name] = n * grid_cells  # selected: validation rows now, test rows later
    return plan


# --------------------------------------------------------------------------- estimate from measured costs
def read_timings(path: Any) -> dict[str, float]:
    """``{component: seconds per image}`` of a ``timings.csv`` / ``extract_timings.csv``."""
    import csv

    with open(path, newline="") as f:
        return {r["method"]: float(r["seconds_per_1000"]) / 1000 for r in csv.DictReader(f)}


def estimate_seconds(plan: ExtractPlan, per_image: Mapping[str, float], main_parts: Sequence[str]) -> tuple[float, str]:
    """Seconds the ``plan`` takes at the measured ``per_image`` costs, and which numbers it used.

    A set's pass costs the sum of ``main_parts`` (the components it computes) per row; a grid cell
    ``grodin_one_grid_point`` per row; a subspace pass row its ``lowdim_<name>`` projection plus one
    all-weights gradient (``kl_allweights``), the statistics pass one gradient per row."""
    used: dict[str, float] = {}

    def cost(key: str) -> float:
        value = per_image.get(key, 0.0)
        if key in per_image:
            used[key] = value
        return value

    row = sum(cost(k) for k in main_parts)
    grad = cost("kl_allweights")
    seconds = row * sum(plan.main_rows.values()) + cost("grodin_one_grid_point") * sum(plan.grid_units.values())
    seconds += grad * plan.stats_rows
    seconds += sum((cost(f"lowdim_{n}") + grad) * rows for n, rows in plan.subspace_rows.items())
    numbers = ", ".join(f"{k} {1000 * v:.1f} s" for k, v in used.items())
    return seconds, f"per 1,000 images: {numbers}" if numbers else "no matching components"
