"""Matrix products for the CPU kernels: SciPy's BLAS called from compiled code.

``gemm`` computes ``c = op(a) @ op(b) + beta * c`` on row-major 2-D arrays whose
last axis is contiguous (any row stride, so column slices of a wider array are
fine).  Large products call the ``sgemm``/``dgemm`` that SciPy exports through
``scipy.linalg.cython_blas`` (the BLAS Numba's own ``np.dot`` uses); small
ones run as plain loops, which beat the BLAS call overhead.

The BLAS functions are bound by symbol name (``llvmlite.binding.add_symbol``)
rather than by address, so kernels that call them can be cached on disk.

The kernels split work across Numba's threads themselves, so BLAS must run
single-threaded inside them: wrap every call in ``single_threaded_blas()``.
"""
import contextlib
import ctypes

import llvmlite.binding as llvm
import scipy.linalg.cython_blas as cython_blas
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .._config import JIT_OPTIONS

# Below this many multiply-adds a compiled loop beats the BLAS call overhead.
BLAS_MIN_WORK = 4096


def _capsule_address(capsule):
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


_GEMM_ADDRESSES = {name: _capsule_address(cython_blas.__pyx_capi__[name]) for name in ("sgemm", "dgemm")}
for _name, _address in _GEMM_ADDRESSES.items():
    llvm.add_symbol(f"nblstm_scipy_{_name}", _address)

# Fortran ABI: every argument by address (passed here as intp).
_GEMM_SIGNATURE = types.void(*([types.intp] * 13))
_sgemm = types.ExternalFunction("nblstm_scipy_sgemm", _GEMM_SIGNATURE)
_dgemm = types.ExternalFunction("nblstm_scipy_dgemm", _GEMM_SIGNATURE)


@intrinsic
def _address_of_copy(typingctx, value):
    """Address of a stack slot holding ``value`` (for Fortran's pass-by-reference)."""

    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once_value(builder, args[0])
        return builder.ptrtoint(slot, context.get_value_type(types.intp))

    return types.intp(value), codegen


def _blas_gemm(c, *args):
    """Call sgemm or dgemm, chosen by the dtype of ``c``."""


@overload(_blas_gemm, jit_options=JIT_OPTIONS)
def _blas_gemm_impl(c, *args):
    routine = {types.float32: _sgemm, types.float64: _dgemm}[c.dtype]

    def impl(c, *args):
        routine(*args)

    return impl


@njit(**JIT_OPTIONS)
def _leading_dim(matrix):
    """BLAS leading dimension of a row-major matrix with unit column stride."""
    return max(matrix.strides[0] // matrix.itemsize, matrix.shape[1], 1)


@njit(**JIT_OPTIONS)
def _gemm_blas(a, b, c, trans_a, trans_b, beta, m, n, k):
    # Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a
    # row-major matrix read column-major is its transpose: call BLAS with the
    # operands swapped and the same transpose flags.
    one = c.dtype.type(1.0)
    _blas_gemm(
        c,
        _address_of_copy(ord("T") if trans_b else ord("N")),
        _address_of_copy(ord("T") if trans_a else ord("N")),
        _address_of_copy(types.int32(n)), _address_of_copy(types.int32(m)), _address_of_copy(types.int32(k)),
        _address_of_copy(one),
        b.ctypes.data, _address_of_copy(types.int32(_leading_dim(b))),
        a.ctypes.data, _address_of_copy(types.int32(_leading_dim(a))),
        _address_of_copy(c.dtype.type(beta)),
        c.ctypes.data, _address_of_copy(types.int32(_leading_dim(c))),
    )


@njit(**JIT_OPTIONS)
def _scale(c, beta):
    """c *= beta, with beta == 0 meaning overwrite (as BLAS: NaN in c does not survive)."""
    if beta == 1.0:
        return
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            c[i, j] = 0.0 if beta == 0.0 else beta * c[i, j]


@njit(**JIT_OPTIONS)
def _gemm_loops(a, b, c, trans_a, trans_b, beta, m, n, k):
    _scale(c, beta)
    if not trans_a and trans_b:  # c[i, j] += a[i, :] . b[j, :]
        for i in range(m):
            for j in range(n):
                acc = c.dtype.type(0.0)
                for p in range(k):
                    acc += a[i, p] * b[j, p]
                c[i, j] += acc
    elif not trans_a:  # c[i, :] += a[i, p] * b[p, :]
        for i in range(m):
            for p in range(k):
                a_ip = a[i, p]
                for j in range(n):
                    c[i, j] += a_ip * b[p, j]
    elif not trans_b:  # c[i, :] += a[p, i] * b[p, :]
        for p in range(k):
            for i in range(m):
                a_pi = a[p, i]
                for j in range(n):
                    c[i, j] += a_pi * b[p, j]
    else:  # c[i, j] += a[:, i] . b[j, :]
        for i in range(m):
            for j in range(n):
                acc = c.dtype.type(0.0)
                for p in range(k):
                    acc += a[p, i] * b[j, p]
                c[i, j] += acc


@njit(**JIT_OPTIONS)
def gemm(a, b, c, trans_a=False, trans_b=False, beta=0.0):
    """c = op(a) @ op(b) + beta * c, op(x) = x.T if trans_x else x.

    a: (m, k), or (k, m) when trans_a; b: (k, n), or (n, k) when trans_b;
    c: (m, n).  Every array 2-D with a contiguous last axis.  beta == 0
    overwrites c without reading it.
    """
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m == 0 or n == 0:
        return
    if m * n * k >= BLAS_MIN_WORK:
        _gemm_blas(a, b, c, trans_a, trans_b, beta, m, n, k)
    else:
        _gemm_loops(a, b, c, trans_a, trans_b, beta, m, n, k)


_blas_controllers_cache = []


def _blas_controllers():
    """threadpoolctl controllers of every BLAS library loaded (SciPy's among them), found once."""
    if not _blas_controllers_cache:
        from threadpoolctl import ThreadpoolController

        _blas_controllers_cache.append(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas_controllers_cache[0]


@contextlib.contextmanager
def single_threaded_blas():
    """Run the body with BLAS on one thread; restores the previous thread counts.

    ``cython_blas`` hides which library it wraps, so every loaded BLAS is
    limited (the kernels call no other BLAS while this is in force).
    """
    limited = [(controller, controller.get_num_threads()) for controller in _blas_controllers()]
    limited = [(controller, count) for controller, count in limited if count != 1]
    for controller, _ in limited:
        controller.set_num_threads(1)
    try:
        yield
    finally:
        for controller, count in limited:
            controller.set_num_threads(count)
