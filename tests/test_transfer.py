"""Split/join of large files for the device tool: exact round trip, corruption detected."""
from __future__ import annotations

import json
import os

import pytest

from analysis.transfer import join_parts, split_file


def test_split_join_roundtrip_and_corruption(tmp_path):
    src = tmp_path / "big.bin"
    data = os.urandom(10_000)
    src.write_bytes(data)
    manifest = split_file(src, tmp_path / "parts", max_bytes=3_000)
    meta = json.loads(manifest.read_text())
    assert [p["size"] for p in meta["parts"]] == [3000, 3000, 3000, 1000]
    out = join_parts(manifest, tmp_path / "joined")
    assert out.read_bytes() == data
    part = tmp_path / "parts" / meta["parts"][1]["file"]
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(ValueError, match="part01: sha256 mismatch"):
        join_parts(manifest, tmp_path / "joined2")
    assert not (tmp_path / "joined2" / "big.bin").exists()
