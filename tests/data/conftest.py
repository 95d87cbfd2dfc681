"""Fixtures for the knowloc.data tests (offline, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

# The real ParaRel copy lives beside the repository (../shared/data/pararel); never copied into it.
PARAREL_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/pararel"


@pytest.fixture
def pararel_dir() -> Path:
    if not (PARAREL_DIR / "patterns").is_dir() or not (PARAREL_DIR / "facts").is_dir():
        pytest.skip(f"ParaRel data not found at {PARAREL_DIR}")
    return PARAREL_DIR
