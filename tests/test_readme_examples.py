"""The examples of README.md and CONTRIBUTING.md run as written: every ```python block (each in a
fresh namespace, in one subprocess started outside the repository, so only the installed package is
importable), and every ```yaml block is a profile the config loader accepts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ood_core.config import load_profile

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "CONTRIBUTING.md")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)

RUNNER = r"""
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
for where, code in blocks:
    try:
        exec(compile(code, where, "exec"), {"__name__": "__main__"})
    except Exception:
        traceback.print_exc()
        sys.exit(f"{where}: this python block failed")
print(f"{len(blocks)} python blocks ran")
"""


def readme_blocks(language: str) -> list[tuple[str, str]]:
    """("<file>:<first line>", code) of every fenced block of ``language`` in README.md and CONTRIBUTING.md."""
    out = []
    for name in DOCS:
        text = (REPO / name).read_text()
        for m in BLOCK.finditer(text):
            if m.group(1) == language:
                out.append((f"{name}:{text[: m.start()].count(chr(10)) + 2}", m.group(2)))
    return out


def test_readme_has_the_own_model_examples():
    code = "\n".join(c for _, c in readme_blocks("python"))
    assert "from ood_core import evaluate" in code and "from ood_core import Detector" in code
    assert "register(" in code  # CONTRIBUTING.md's "Adding a score" runs too


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs(tmp_path):
    import json

    blocks = readme_blocks("python")
    assert blocks
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.pop("PYTHONPATH", None)  # the installed ood_core (editable in ./.venv), not the test's sys.path
    proc = subprocess.run(
        [sys.executable, "runner.py", "blocks.json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_every_yaml_block_of_the_readme_is_a_valid_profile(tmp_path):
    blocks = readme_blocks("yaml")
    assert blocks
    for i, (line, text) in enumerate(blocks):
        path = tmp_path / f"readme_{i}.yaml"
        path.write_text(text)
        cfg = load_profile(str(path))  # unknown keys or wrong types raise ConfigError
        assert cfg["data"]["ood"], line
