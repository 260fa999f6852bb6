"""One table renderer, two variants: Markdown and LaTeX (booktabs).

A :class:`Table` holds label columns (text) and value columns (numbers, shown with ``decimals``
digits; None / NaN as a dash). With ``best = 'max'`` or ``'min'`` the best value of each value column
is bold, compared at display precision so that displayed ties are all bold; ``stds`` adds
``±std`` beside a value. :func:`markdown` and :func:`latex` render the same table; only the syntax
differs (``**x**`` / ``\\textbf{x}``, ``±`` / ``$\\pm$``, ``—`` / ``--``; LaTeX escapes every text cell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

DASH = "—"

# LaTeX replacement of each special character (one pass: a replacement is never re-escaped)
_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "±": r"$\pm$",
    "—": "--",
    "−": "-",  # below: the display names' math signs
    "‖": r"\ensuremath{\|}",
    "×": r"\ensuremath{\times}",
    "₁": r"\ensuremath{_1}",
    "₂": r"\ensuremath{_2}",
    "²": r"\ensuremath{^2}",
}


def tex_escape(s: Any) -> str:
    """``str(s)`` with LaTeX's special characters (and the display names' math signs) escaped."""
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def fmt_number(v: float | None, decimals: int = 2) -> str:
    """``v`` with ``decimals`` digits; a dash for None / NaN."""
    return DASH if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{decimals}f}"


def best_rows(column: Sequence[float | None], mode: str, decimals: int = 2) -> set[int]:
    """Row positions holding the best value of one column (``mode`` 'max' or 'min'), compared
    rounded to ``decimals`` so that displayed ties are all best; None is never best."""
    vals = [(i, round(v, decimals)) for i, v in enumerate(column) if v is not None]
    if not vals:
        return set()
    best = (max if mode == "max" else min)(v for _, v in vals)
    return {i for i, v in vals if v == best}


@dataclass(frozen=True)
class Table:
    """Label columns then value columns; one entry per row in ``labels`` / ``values`` (/ ``stds``)."""

    label_header: Sequence[str]  # names of the label (text) columns
    columns: Sequence[str]  # names of the value (number) columns
    labels: Sequence[Sequence[str]]  # per row: its label cells
    values: Sequence[Sequence[float | None]]  # per row: one number per value column
    stds: Sequence[Sequence[float | None]] | None = None  # per row: '±' beside each value (None: none)
    best: str | None = None  # 'max' | 'min': best value per column in bold
    decimals: int = 2
    groups: Sequence[Any] | None = None  # per row: group key (LaTeX: a rule where it changes)
    rule_before: int | None = None  # LaTeX: a vertical rule before this value column

    @property
    def header(self) -> list[str]:
        return [*self.label_header, *self.columns]

    def bold(self) -> list[set[int]]:
        """Per value column, the rows shown in bold."""
        if self.best is None:
            return [set() for _ in self.columns]
        return [best_rows([row[j] for row in self.values], self.best, self.decimals) for j in range(len(self.columns))]

    def _value_cells(self, bold_fmt: str, std_fmt: str, dash: str) -> list[list[str]]:
        bold = self.bold()
        out = []
        for i, row in enumerate(self.values):
            cells = []
            for j, v in enumerate(row):
                s = fmt_number(v, self.decimals).replace(DASH, dash)
                if i in bold[j]:
                    s = bold_fmt.format(s)
                sd = self.stds[i][j] if self.stds is not None else None
                if sd is not None:
                    s += std_fmt.format(f"{sd:.{self.decimals}f}")
                cells.append(s)
            out.append(cells)
        return out


def markdown_grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table of ready-made text cells (no trailing newline)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def markdown(table: Table) -> str:
    """The table in GitHub Markdown (bold ``**x**``, ``x ±s``; no trailing newline)."""
    values = table._value_cells("**{}**", " ±{}", DASH)
    return markdown_grid(table.header, [[*lab, *val] for lab, val in zip(table.labels, values)])


def latex(table: Table, *, caption: str, label: str, header: Sequence[str] | None = None) -> str:
    """The table as a booktabs ``table`` environment (``\\usepackage{booktabs}``); ``caption`` and the
    cells are escaped here, ``label`` is used as given; ``header`` replaces the column names shown."""
    n_values, spec = len(table.columns), "l" * len(table.label_header)
    if table.rule_before is None:
        spec += "r" * n_values
    else:
        spec += "r" * table.rule_before + "|" + "r" * (n_values - table.rule_before)
    shown = table.header if header is None else header
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{tex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(tex_escape(c) for c in shown) + r" \\",
        r"\midrule",
    ]
    values = table._value_cells(r"\textbf{{{}}}", r"\,{{\scriptsize$\pm${}}}", "--")
    for i, (lab, val) in enumerate(zip(table.labels, values)):
        if table.groups is not None and i > 0 and table.groups[i] != table.groups[i - 1]:
            out.append(r"\midrule")
        out.append(" & ".join([*(tex_escape(c) for c in lab), *val]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out)
