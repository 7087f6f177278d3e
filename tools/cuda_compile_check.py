"""Compile every numba.cuda kernel of nblstm for a real GPU, on a machine without one.

Numba's CUDA simulator runs kernels as Python: it never types or compiles them,
so a kernel the simulator runs may still fail to compile for a GPU.  This tool
runs a matrix of models under the simulator (a child process), records the
argument types of every kernel launch, and compiles each (kernel, argument
types) to PTX with NVVM in this process.  It needs the CUDA toolkit's NVVM
(libnvvm, found as Numba finds it: CUDA_HOME, /usr/local/cuda, conda), not a GPU.

    python tools/cuda_compile_check.py [--cc 9.0] [--registers]

With --registers each signature is also assembled by the toolkit's ptxas, which
reports the registers a thread uses (what bounds how many blocks share a
multiprocessor, so how large a cooperative grid can be).

Exit status: 0 when every kernel compiled, 1 when one did not, 2 when NVVM is missing.
"""
import argparse
import importlib
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time

NVVM_MISSING = 2
KERNEL_MODULES = ("nblstm.kernels.cuda_common", "nblstm.kernels.cuda_forward", "nblstm.kernels.cuda_backward")


def _record_launches(path):
    """Run the model matrix under the simulator and pickle {(module, kernel): {argument types}} to ``path``."""
    import numba
    import numpy as np
    from numba import types
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    from nblstm import cuda_backend
    from nblstm.api import LSTM, LSTMCell

    launches = {}
    launch = FakeCUDAKernel.__call__

    def argument_type(value):
        if isinstance(value, FakeCUDAArray):
            value = value._ary
        if isinstance(value, np.ndarray):  # device arrays are never read-only
            return types.Array(numba.from_dtype(value.dtype), value.ndim, numba.typeof(value).layout)
        return numba.typeof(value)

    def recording_launch(kernel, *args):
        if not kernel._device:
            key = (kernel.fn.__module__, kernel.fn.__name__)
            launches.setdefault(key, set()).add(tuple(argument_type(arg) for arg in args))
        return launch(kernel, *args)

    FakeCUDAKernel.__call__ = recording_launch
    sys.setswitchinterval(1e-4)  # the simulator's barriers wait on thread switches (tests/cuda/conftest.py)
    cuda_backend.TILE, cuda_backend.THREADS = 2, 4
    rng = np.random.default_rng(0)
    options = [dict(), dict(bias=False, batch_first=True), dict(bidirectional=True), dict(proj_size=2),
               dict(num_layers=2, bidirectional=True, proj_size=2, dropout=0.5)]
    for dtype in (np.float32, np.float64):
        for persistent_max_batch in (10**9, -1):  # both recurrence designs
            cuda_backend.PERSISTENT_MAX_BATCH = persistent_max_batch
            for option in options:
                model = LSTM(3, 4, dtype=dtype, device="cuda", **option)
                x = rng.standard_normal((3, 2, 3)).astype(dtype)
                model.eval()
                model(x)
                model.train()
                output, _ = model(x)
                model.backward(np.ones(output.shape, dtype))
            cell = LSTMCell(3, 4, dtype=dtype, device="cuda")
            h, c = cell(rng.standard_normal((2, 3)).astype(dtype))
            cell.backward(np.ones(h.shape, dtype), np.ones(c.shape, dtype))
    with open(path, "wb") as file:
        pickle.dump(launches, file)


def _kernels():
    """(module, name) of every kernel (not device function) of nblstm's CUDA kernel modules."""
    from numba.cuda.dispatcher import CUDADispatcher

    found = []
    for module in KERNEL_MODULES:
        for name, value in vars(importlib.import_module(module)).items():
            kernel = isinstance(value, CUDADispatcher) and not value.targetoptions.get("device")
            if kernel and value.py_func.__module__ == module:
                found.append((module, name))
    return found


def _registers(ptxas, ptx, cc):
    """The registers a thread of the kernel in ``ptx`` uses, as ptxas assembles it for ``cc``."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as file:
        file.write(ptx)
        file.flush()
        report = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", "-c", file.name, "-o", os.devnull],
                                capture_output=True, text=True, check=True).stderr
    return re.search(r"Used (\d+) registers", report).group(1)


def _compile_all(launches, cc, ptxas=None):
    """Compile every recorded launch to PTX (and with ``ptxas``, assemble it and report its registers);
    print one line per kernel and return the failures."""
    from types import SimpleNamespace

    from numba import cuda
    from numba.cuda import dispatcher

    # A kernel's device functions are compiled for the current device's compute capability;
    # there is no device here, so they are told the one asked for.
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    failures = [f"{module}.{name}: never launched by the model matrix, so not checked"
                for module, name in _kernels() if (module, name) not in launches]
    for (module, name), signatures in sorted(launches.items()):
        kernel = getattr(importlib.import_module(module), name).py_func
        registers = []
        for signature in sorted(signatures, key=str):
            try:
                ptx, _ = cuda.compile_ptx(kernel, signature, cc=cc)
            except Exception as error:  # noqa: BLE001  (any compile error is reported, then the next kernel)
                failures.append(f"{module}.{name}{signature}: {type(error).__name__}: {error}")
                continue
            if ptxas:
                registers.append(_registers(ptxas, ptx, cc))
        print(f"{module}.{name}: {len(signatures)} signature(s)"
              + (f", registers a thread: {' '.join(registers)}" if registers else ""))
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for (default 9.0)")
    parser.add_argument("--registers", action="store_true",
                        help="also assemble each signature with the toolkit's ptxas and print the registers a thread "
                             "uses (threads x registers bounds how many blocks share a multiprocessor)")
    parser.add_argument("--record", help=argparse.SUPPRESS)  # the simulator child writes its launches here
    args = parser.parse_args(argv)
    if args.record:
        _record_launches(args.record)
        return 0
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        parser.error("run without NUMBA_ENABLE_CUDASIM=1: the kernels are compiled in this process")
    from numba.cuda.cudadrv import nvvm

    if not nvvm.is_available():
        print("NVVM (libnvvm) not found: install the CUDA toolkit or set CUDA_HOME", file=sys.stderr)
        return NVVM_MISSING
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "launches.pickle")
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--record", path], check=True,
                       env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
        print(f"launches recorded under the simulator in {time.perf_counter() - start:.0f} s")
        with open(path, "rb") as file:
            launches = pickle.load(file)
    ptxas = None
    if args.registers:
        ptxas = shutil.which("ptxas") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "ptxas")
        if not os.path.exists(ptxas):
            print("ptxas not found (not on PATH nor in CUDA_HOME/bin): registers not reported", file=sys.stderr)
            ptxas = None
    start = time.perf_counter()
    failures = _compile_all(launches, tuple(int(part) for part in args.cc.split(".")), ptxas)
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    print(f"{sum(map(len, launches.values()))} kernel signatures compiled in {time.perf_counter() - start:.0f} s, "
          f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
