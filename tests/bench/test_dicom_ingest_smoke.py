"""Smoke test of bench/dicom_ingest.py: its code path (phantom files, a fresh fhirai `dicom_scp` on
its embedded defaults and dcmtk's storescp, storescu over 1 and 4 associations, the stored-count
checks, the table) on 8 tiny slices. No timing asserts: the benchmark itself is run by hand."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("storescu", "storescp", "echoscu")), reason="dcmtk is not installed"
)


def test_dicom_ingest_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_dicom_ingest", ROOT / "bench" / "dicom_ingest.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rc = bench.main(["--slices", "8", "--size", "64", "--runs", "1", "--targets", "fhirai-sqlite,storescp"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "fhirai dicom_scp, SQLite" in out
    assert "dcmtk storescp" in out
