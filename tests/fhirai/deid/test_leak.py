"""The leak test, CI-sized: bench/deid_eval.py's generated corpus (fixed seed) through the engine.
Structured identifiers never reach what the inference tier would see, the patient's own name never
survives free text, and free-text recall/precision meet the targets (the full run is in bench/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "deid_eval.py"


@pytest.fixture(scope="module")
def evaluation():
    spec = importlib.util.spec_from_file_location("deid_eval", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["deid_eval"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.run(patients=25, options=frozenset({"clean-descriptors"}), seed=7)


def test_no_structured_identifier_leaks(evaluation):
    for kind in ("dicom", "hl7", "fhir"):
        assert evaluation[kind]["structured_leaks"] == 0, kind
        assert evaluation[kind]["own_name_leaks"] == 0, kind


def test_free_text_recall_and_precision(evaluation):
    text = evaluation["free_text"]
    for category in ("NAME", "ID", "DATE", "PHONE"):
        assert text[category]["recall"] >= 0.99, (category, text[category])
    assert text["_all"]["precision"] >= 0.9
