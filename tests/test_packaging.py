"""The built wheel: both import packages, the profiles as package data, and an installed copy (outside
the checkout) that finds its profiles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_profiles_and_an_installed_copy_knows_them(tmp_path):
    pytest.importorskip("setuptools")
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip is not available")
    # build from a copy of the sources, so the checkout gets no build/ or egg-info of this test
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src)
    for pkg in ("ood_core", "analysis"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    r = subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (tmp_path / "whl").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        top = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        top_level = set(z.read(top).decode().split())
    profiles = sorted(p.name for p in (REPO / "analysis" / "configs").glob("*.yaml"))
    assert profiles and "demo.yaml" in profiles
    missing = [p for p in profiles if f"analysis/configs/{p}" not in names]
    assert not missing, f"the wheel lacks the profiles {missing}"
    lists = sorted(p.name for p in (REPO / "ood_core" / "data" / "openood_v1_5").iterdir())
    missing = [p for p in lists if f"ood_core/data/openood_v1_5/{p}" not in names]
    assert "test_cifar10.txt.gz" in lists and not missing, f"the wheel lacks the OpenOOD lists {missing}"
    assert top_level == {"analysis", "ood_core"}, top_level
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", "figures/", "cache/"))]

    site = tmp_path / "site"
    r = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    code = (
        "import ood_core, ood_core.config as c; print(ood_core.__file__); "
        "print(' '.join(sorted(p.name for p in c.CONFIG_DIR.glob('*.yaml')))); "
        "print(c.load_profile('demo')['model']['name'])"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    where, known, model = r.stdout.splitlines()[-3:]
    assert Path(where).resolve().is_relative_to(site.resolve()), f"imported {where}, not the installed copy"
    assert known.split() == profiles, known
    assert model == "small_cnn"

    # the Python API of the installed copy works on its own: no analysis/ module is imported
    api_code = (
        "import sys, torch, torch.nn as nn\n"
        "from ood_core.api.evaluation import evaluate\n"
        "torch.manual_seed(0)\n"
        "m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(4, 3)).eval()\n"
        "x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 3, (40,))\n"
        "ev = evaluate(m, train=(x, y), id_test=(x + 0.1, y), ood={'o': x + 3}, methods=['msp', 'grodin_g'],"
        " config={'extract': {'odin_T': [1, 10], 'odin_eps': [0.0, 0.002]}, 'benchmark': {'bootstrap': 2}})\n"
        "import ood_core.api.evaluation as api\n"
        "print(api.__file__)\n"
        "print(len(ev.metrics), sorted(n for n in sys.modules if n.split('.')[0] == 'analysis'))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", api_code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    where, result = r.stdout.splitlines()[-2:]
    assert Path(where).resolve().is_relative_to(site.resolve()), where
    assert result == "2 []", result
