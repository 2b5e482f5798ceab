"""Shared fixtures. Reference data (Dynamic-OFA's Jetson tables and OFA's predictor) is read from
$DYNADNN_REFERENCE, else from ../shared/reference beside the repository (where CI puts it).

Also shared: `cli_env` (the environment for `python -m dynadnn` subprocesses), `digits` (the small real data
set the tests can afford to train on), `perturbed_supernet` (a tiny super-network whose BN and kernel
matrices are not at their defaults, so that mistakes show) and `runs_code` (an object whose unpickling
would run a shell command)."""

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


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """Environment for `python -m dynadnn ...` subprocesses: this checkout's sources, one OpenMP thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits as a dynadnn data set (tiny: what the tests train and calibrate on)."""
    from dynadnn.data import load_dataset

    return load_dataset("digits")


def _perturbed_supernet(seed: int = 0):
    """A tiny super-network with random weights and non-trivial BN affine/statistics and kernel matrices
    (so that folding, calibration or a round trip that dropped them would show), in eval mode."""
    from dynadnn.space import load_space
    from dynadnn.supernet import SuperNet

    torch.manual_seed(seed)
    net = SuperNet(load_space("tiny"))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "kernel_transforms" in name:
                p.add_(0.05 * torch.randn_like(p))
            elif name.endswith("bn.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bn.bias"):
                p.normal_(0, 0.2)
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    net.invalidate()
    return net.eval()


@pytest.fixture(scope="session")
def perturbed_supernet():
    """Builds a fresh perturbed tiny super-network: `perturbed_supernet(seed=0)`."""
    return _perturbed_supernet


class RunsCode:
    """Unpickling this calls os.system, which would create the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture
def runs_code(tmp_path) -> RunsCode:
    """An object whose unpickling would run code; `runs_code.marker` exists afterwards if it did."""
    return RunsCode(tmp_path / "PWNED")


# --- bad input: the promise every verb keeps ------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file below `root`."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def refused(tmp_path, capsys):
    """`refused(argv, named, out=None)`: run the CLI in-process and require what bad input must give: exit 2,
    one line on stderr starting `dynadnn: error:` that contains `named`, no traceback, and no file below
    tmp_path created, changed or removed (outside `out` when given, which must not hold a result either)."""
    from dynadnn.cli import main

    def check(argv: list[str], named: str, out: Path | None = None) -> str:
        before = snapshot(tmp_path)
        capsys.readouterr()
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err.strip()
        assert code == 2, f"exit {code}, stderr: {err[-500:]}"
        assert err.startswith("dynadnn: error:") and "\n" not in err and "Traceback" not in err, err
        assert named in err, f"{named!r} not in {err!r}"
        after = snapshot(tmp_path)
        if out is not None:
            inside = lambda k: (tmp_path / k).resolve().is_relative_to(Path(out).resolve())  # noqa: E731
            before = {k: v for k, v in before.items() if not inside(k)}
            after = {k: v for k, v in after.items() if not inside(k)}
        assert after == before, f"files changed: {set(after) ^ set(before) or 'contents'}"
        return err

    return check
