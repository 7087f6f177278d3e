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

# For the functions that the time loops call at every step (and, inside ``packed.gemm_packed``, its
# panel product and one-row register tile): Numba compiles them into each caller
# (inline="always", at the level of its IR).  Compiled apart, a call passes every array as a dozen
# scalar arguments and reference-counts it on the way in and out, which at batch 1 and hidden 16
# took more than half of a forward step: 198 -> 86 ns a step there, 262 -> 129 at hidden 32 (the
# kernels' step loop over 1000 steps, one thread, float32).  Inlining costs compile time at every
# call site, so it is kept to these functions: also inlining ``packed.gemm_packed``, called from
# every packed product, took a step to 72 ns but a cold forward compile from 70 to 96 s.
STEP_JIT_OPTIONS = dict(JIT_OPTIONS, inline="always")
