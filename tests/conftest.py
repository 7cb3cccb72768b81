"""Shared fixtures: the tiny CoNLL dataset and the location of ../shared/data (when present)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny"
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
TINY_KEY = "tiny-4787f17c29ca"     # store.dataset_key of the tiny dataset (its folder in the store)

needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "twitter2017" / "train.txt").is_file(),
    reason=f"benchmark data not found at {SHARED_DATA}")


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    """A writable copy of the tiny dataset (train/valid/test + captions), named ``tiny``."""
    target = tmp_path / "tiny"
    shutil.copytree(TINY, target)
    return target
