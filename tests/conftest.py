"""Shared fixtures. Reference data (Dynamic-OFA's Jetson tables and OFA's predictor) is read from
$DYNADNN_REFERENCE, else from ../shared/reference beside the repository (where CI puts it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Module- and session-scoped fixtures run before the per-test fixture below: one thread for them too.
torch.set_num_threads(1)


def reference_dir() -> Path | None:
    env = os.environ.get("DYNADNN_REFERENCE")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "reference"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if path is None:
        pytest.skip("reference data not found: set DYNADNN_REFERENCE=/path/to/shared/reference")
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests share a 2-core machine: keep torch to one intra-op thread unless a test says otherwise."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
