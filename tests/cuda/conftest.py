"""Runs tests/cuda on a real GPU when there is one, else under Numba's CUDA simulator.

The simulator must be switched on before numba.cuda is first imported.
pytest loads this file while collecting, before it imports any test module of
the suite, so a plain ``pytest`` at the repository root works; a GPU is looked
for in a subprocess, so that this process has not imported numba.cuda yet.

The simulator runs a Python thread per CUDA thread.  The fixtures below shrink
the thread blocks so that the tiny test inputs still span several blocks, and
shorten the interpreter's thread switch interval, which is what the
simulator's barriers wait on.  It also makes the simulator's creation of
shared arrays thread-safe (see ``_serialise_shared_array_creation``).
"""
import os
import subprocess
import sys
import threading

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


def _serialise_shared_array_creation():
    """Make the simulator's ``cuda.shared.array`` safe for the threads of one block.

    Numba's simulator (0.68) creates a block's static shared array when the first
    thread reaches it: it looks the array up by source line and stores a new one
    if none is there, without a lock.  When the interpreter switches threads
    between the look-up and the store, two threads each create an array and one
    of them goes on working on its own copy while the others read uninitialised
    memory where its values should be: about one model call in a hundred gave
    garbage or NaN in a few elements under these tests.  This replacement does
    the same look-up and store under a lock (dynamic shared memory, ``shape 0``,
    is one buffer for all threads and goes to the original).
    """
    import numpy as np
    from numba.cuda.simulator.kernelapi import FakeCUDAShared
    from numba.np import numpy_support

    create = FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:
            return create(self, shape, dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            if key not in self._allocations:
                dtype = numpy_support.as_dtype(dtype) if isinstance(dtype, numba.types.Type) else dtype
                self._allocations[key] = np.empty(shape, dtype)
            return self._allocations[key]

    FakeCUDAShared.array = array


if numba.config.ENABLE_CUDASIM:
    _serialise_shared_array_creation()

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
