"""Compile options for every Numba kernel, read once from the environment.

``NBLSTM_CACHE=0`` turns the on-disk kernel cache off (useful when the package
directory is read-only or a stale cache is suspected).  ``NBLSTM_FASTMATH=0``
compiles the kernels with strict IEEE semantics.

The fast-math set deliberately leaves out ``nnan`` and ``ninf`` so that NaN and
inf propagate through the LSTM exactly as they do in PyTorch.  ``reassoc``
lets LLVM reorder sums (vectorised dot products); the float32 parity
tolerances allow for it.
"""
import os


def _flag(name, default):
    value = os.environ.get(name, default).strip().lower()
    return value not in ("0", "false", "no", "off", "")


CACHE = _flag("NBLSTM_CACHE", "1")

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"} if _flag("NBLSTM_FASTMATH", "1") else False

# The activation functions do their own range reduction, which reassociation
# would undo (x - n*C1 - n*C2 must not become x - n*(C1 + C2)).
ACTIVATION_FASTMATH = {"nsz", "contract"} if FASTMATH else False

# error_model="numpy": float division by zero gives inf/NaN as in NumPy instead of
# raising, which also lets LLVM vectorise loops that divide.
JIT_OPTIONS = {"nogil": True, "cache": CACHE, "fastmath": FASTMATH, "error_model": "numpy"}
PARALLEL_JIT_OPTIONS = dict(JIT_OPTIONS, parallel=True)
