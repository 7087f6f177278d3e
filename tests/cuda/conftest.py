"""Runs tests/cuda on a real GPU when there is one, else under Numba's CUDA simulator.

The simulator must be switched on before numba.cuda is first imported.
pytest loads this file while collecting, before it imports any test module of
the suite, so a plain ``pytest`` at the repository root works; a GPU is looked
for in a subprocess, so that this process has not imported numba.cuda yet.

The simulator runs a Python thread per CUDA thread.  The fixtures below shrink
the thread blocks so that the tiny test inputs still span several blocks, and
shorten the interpreter's thread switch interval, which is what the
simulator's barriers wait on.
"""
import os
import subprocess
import sys

import numba
import pytest


def _real_gpu_present():
    env = {name: value for name, value in os.environ.items() if name != "NUMBA_ENABLE_CUDASIM"}
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
                           env=env, capture_output=True, text=True, check=False)
    return probe.stdout.strip() == "True"


if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and "numba.cuda" not in sys.modules and not _real_gpu_present():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    numba.config.ENABLE_CUDASIM = True

from numba import cuda  # noqa: E402  (after the simulator switch)

# Tile edge and threads per block in the tests: small enough that every kernel runs several blocks.
TEST_TILE = 2
TEST_THREADS = 4


def pytest_collection_modifyitems(config, items):
    if cuda.is_available():
        return
    skip = pytest.mark.skip(reason="numba.cuda was imported before tests/cuda/conftest.py could switch the "
                                   "simulator on and there is no GPU; run NUMBA_ENABLE_CUDASIM=1 pytest tests/cuda")
    for item in items:
        if "tests/cuda/" in item.nodeid:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="package")
def _fast_thread_switching():
    previous = sys.getswitchinterval()
    if numba.config.ENABLE_CUDASIM:
        sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(previous)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    import nblstm.cuda_backend as cuda_backend

    monkeypatch.setattr(cuda_backend, "TILE", TEST_TILE)
    monkeypatch.setattr(cuda_backend, "THREADS", TEST_THREADS)


@pytest.fixture(params=["persistent", "per_step"])
def recurrence(request, monkeypatch):
    """Runs the test once with each recurrence design (the other one may not launch)."""
    from cuda_helpers import force_recurrence

    force_recurrence(monkeypatch, request.param)
    return request.param
