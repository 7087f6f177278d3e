"""Matrix products for the CPU kernels: SciPy's BLAS called from compiled code.

``gemm`` computes ``c = op(a) @ op(b) + beta * c`` on row-major 2-D arrays whose
last axis is contiguous (any row stride, so column slices of a wider array are
fine).  Large products call the ``sgemm``/``dgemm`` that SciPy exports through
``scipy.linalg.cython_blas`` (the BLAS Numba's own ``np.dot`` uses); small
ones run as plain loops, which beat the BLAS call overhead; with a few rows of
a and a large b, a @ b.T runs as SIMD dot products and a @ b as register tiles
over b's rows (``tiles.py``), both of which beat BLAS's repacking of b.

The BLAS functions are bound by symbol name (``llvmlite.binding.add_symbol``)
rather than by address, so kernels that call them can be cached on disk.

The kernels split work across Numba's threads themselves, so BLAS must run
single-threaded inside them: wrap every call in ``single_threaded_blas()``.
"""
import ctypes
import functools

import llvmlite.binding as llvm
import scipy.linalg.cython_blas as cython_blas
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .._config import JIT_OPTIONS
from .simd import VECTOR_BITS, lanes_of, vfma, vload, vsplat, vstore, vsums, vsums_vectors
from .tiles import NARROW_MAX_VECTORS, gemm_nn_narrow, gemm_nn_panels
from .views import flat_rows, row_of

# Where the compiled loops below beat BLAS, measured on 2 cores of an AMD EPYC (Zen 5, AVX-512) with
# SciPy's OpenBLAS 0.3.30, which runs its Haswell (AVX2) kernels there and repacks b at every call:
# a product of a few rows then costs it 20-25 us whatever the rows up to 8 (1 x 512 x 128, a @ b.T:
# 23 us, 5 GFLOP/s).  One thread, float32, medians of 5, times in us.
# Below this many multiply-adds a compiled loop beats the BLAS call overhead.
BLAS_MIN_WORK = 4096
# Up to this many rows of c, register-blocked loops (``_gemm_nt_loops``, ``_gemm_nn_loops``) run
# whatever neither the SIMD dot products nor the register tiles take: a @ b.T with 1-2 rows (one row
# over whole vectors runs as ``_gemm_nt_row``; BLAS / loops, as (m, n, k): 1 x 512 x 128 23.3 / 4.0,
# 2 x 2048 x 512 410 / 49, 2 x 80 x 20 0.60 / 0.35), a @ b with fewer than a panel of columns (4 x 32
# x 128 1.63 / 1.02; 4 x 20 x 80 even, 8 rows 0.81 / 1.65).
LOOPS_MAX_ROWS = 4
# One row of a @ b.T (``_gemm_nt_row``) sums 16 rows of b at a time into whole vectors where b's rows take up to
# this many bytes; longer rows ran slower 16 at a time (rows 4 KiB apart fall in one set of the 8-way L1 cache,
# a likely cause).  One thread, AMD EPYC (Zen 4), medians of 7, groups of 8 / 16 (ns, as (n, k)): float32
# 512 x 128 3057 / 2446, 512 x 32 1378 / 715, 80 x 32 238 / 123, 2048 x 512 (2 KiB rows) 55651 / 57151;
# float64 512 x 128 6160 / 5104, 128 x 64 891 / 679, 2048 x 512 (4 KiB) 121563 / 256758.
ROW_GROUP_MAX_BYTES = 1024
# a @ b.T with VECTORS_MIN_ROWS rows of a or more runs as SIMD dot products (``_gemm_nt_vectors``)
# up to VECTORS_MAX_ROWS rows for its reduction: ((fewest k, most rows), ...).  BLAS / vectors, as
# (m, n, k): 4 x 512 x 128 24.8 / 7.4, 3 x 2048 x 512 501 / 58, 8 x 128 x 32 2.1 / 1.4, 16 x 128 x 32
# 2.3 / 4.3, 32 x 512 x 128 50 / 32, 48 x 2048 x 512 1041 / 949, 64 x 512 x 128 83 / 78 (even), 128
# rows 0.86-0.87x; k 20: BLAS from 4 rows (0.58 against loops 0.64, vectors 1.28).
VECTORS_MIN_ROWS = 3
VECTORS_MAX_ROWS = ((128, 48), (32, 8))
# a @ b with 2 rows of a or more and at least a panel of columns (a panel: 64 float32 or 32 float64
# columns on AVX-512) runs as register tiles over b's rows in place (``tiles.gemm_nn_panels``),
# whatever the rows where the columns are whole panels: BLAS / tiles, as (m, n, k), 2 x 128 x 512
# 27.8 / 2.7, 8 x 512 x 2048 430 / 97, 16 x 64 x 128 4.5 / 1.1, 128 x 128 x 512 150 / 82, 4096 x 128
# x 32 288 / 137, 4096 x 512 x 2048 69.7 / 60.2 ms.  The last partial panel's columns run as loops,
# which lose to BLAS from a few dozen rows: up to PANELS_MAX_ROWS_PARTIAL rows then (8 x 100 x 400
# 16.7 / 11.0, 64 x 70 x 280 27.5 / 49.4).  a.T @ b (the weight gradients, d_gates.T @ inputs) runs
# on the same tiles whatever the rows, a read in place by columns (measured on the Intel Xeon VM,
# AVX-512, where these rules were first set): BLAS time / theirs, one thread, alternated (medians
# of 5), as (k, m, n): float32 800 x 512 x 128 1.73x, 800 x 2048 x 512 1.20x, 6400 x 1024 x 256
# 1.15x, 3200 x 4096 x 1024 1.15x, 80 x 512 x 128 2.19x, 800 x 2048 x 64 1.90x, 8 x 2048 x 512 1.78x,
# 2 x 2048 x 512 1.38x, 1 x 512 x 128 1.08x, 800 x 8 x 128 4.63x; float64 800 x 512 x 128 1.22x, 800
# x 2048 x 512 1.12x, 6400 x 1024 x 256 1.15x, 8 x 512 x 128 1.72x, 800 x 8 x 128 2.46x.  On that
# Xeon BLAS ran some few-row products faster than these loops (BLAS time / theirs 0.6-1.1 for b of
# 2^16 values and less, k 32-64, or 24-32 rows; perhaps OpenBLAS's small-matrix kernels for its
# SkylakeX target, a guess): these rules, set on the AMD EPYC, may give up to 1.7x there (not
# re-measured: that machine is no longer at hand).
PANELS_MIN_COLUMNS = 64
PANELS_MAX_ROWS_PARTIAL = 16


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
def _store(c_row, j, n, beta, sums):
    """c_row[j + q] = sums[q] + beta * c_row[j + q] for the q < len(sums) with j + q < n (beta == 0
    overwrites)."""
    for q in range(min(len(sums), n - j)):
        c_row[j + q] = sums[q] if beta == 0.0 else sums[q] + beta * c_row[j + q]


@njit(**JIT_OPTIONS)
def _dot_2x4(a0, a1, b0, b1, b2, b3):
    """The 8 dot products of rows a0, a1 with rows b0..b3 (1-D, same length)."""
    zero = a0.dtype.type(0.0)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
    for p in range(a0.shape[0]):
        x0, x1 = a0[p], a1[p]
        w0, w1, w2, w3 = b0[p], b1[p], b2[p], b3[p]
        s00 += x0 * w0
        s01 += x0 * w1
        s02 += x0 * w2
        s03 += x0 * w3
        s10 += x1 * w0
        s11 += x1 * w1
        s12 += x1 * w2
        s13 += x1 * w3
    return (s00, s01, s02, s03), (s10, s11, s12, s13)


@njit(**JIT_OPTIONS)
def _dot_1x4(a0, b0, b1, b2, b3):
    """The 4 dot products of row a0 with rows b0..b3."""
    zero = a0.dtype.type(0.0)
    s0 = s1 = s2 = s3 = zero
    for p in range(a0.shape[0]):
        x0 = a0[p]
        s0 += x0 * b0[p]
        s1 += x0 * b1[p]
        s2 += x0 * b2[p]
        s3 += x0 * b3[p]
    return s0, s1, s2, s3


@njit(**JIT_OPTIONS)
def _gemm_nt_loops(a, b, c, beta):
    """c = a @ b.T + beta * c as register blocks of dot products: 2 rows of a by 4 rows of b,
    and 1 by 4 for a last odd row (edge columns recompute the last row of b, stored once)."""
    m, n = c.shape
    for i in range(0, m, 2):
        for j in range(0, n, 4):
            b0, b1 = row_of(b, j), row_of(b, min(j + 1, n - 1))
            b2, b3 = row_of(b, min(j + 2, n - 1)), row_of(b, min(j + 3, n - 1))
            if i + 1 < m:
                first, second = _dot_2x4(row_of(a, i), row_of(a, i + 1), b0, b1, b2, b3)
                _store(row_of(c, i + 1), j, n, beta, second)
            else:
                first = _dot_1x4(row_of(a, i), b0, b1, b2, b3)
            _store(row_of(c, i), j, n, beta, first)


@njit(**JIT_OPTIONS)
def _fma_row(a_flat, offset, w0, w1, s0, s1):
    """(s0, s1) + the vector of a at ``offset`` times w0 and w1."""
    x = vload(a_flat, offset)
    return vfma(x, w0, s0), vfma(x, w1, s1)


@njit(**JIT_OPTIONS)
def _gemm_nt_vectors(a, b, c, beta):
    """c = a @ b.T + beta * c as SIMD dot products: a register tile of 4 rows of a by 2 rows of b
    holds 8 vector accumulators along k, summed across lanes at the end (``vsums``); the last
    k % lanes columns follow as ``_gemm_nt_loops``.  Nothing is repacked (as BLAS and
    ``packed.gemm_packed`` do), which pays where few rows of a share each weight (``uses_vectors``).
    Edge tiles recompute the last row of a or b, stored once.
    """
    m, n = c.shape
    (a_flat, a_stride), (b_flat, b_stride), (c_flat, c_stride) = flat_rows(a), flat_rows(b), flat_rows(c)
    lanes = lanes_of(a_flat)
    k_vectors = a.shape[1] - a.shape[1] % lanes
    beta = c.dtype.type(beta)
    zero = vsplat(c.dtype.type(0.0))
    for j in range(0, n, 2):
        w0_start, w1_start = j * b_stride, min(j + 1, n - 1) * b_stride
        for i in range(0, m, 4):
            a0, a1 = i * a_stride, min(i + 1, m - 1) * a_stride
            a2, a3 = min(i + 2, m - 1) * a_stride, min(i + 3, m - 1) * a_stride
            s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = zero
            for p in range(0, k_vectors, lanes):
                w0, w1 = vload(b_flat, w0_start + p), vload(b_flat, w1_start + p)
                s00, s01 = _fma_row(a_flat, a0 + p, w0, w1, s00, s01)
                s10, s11 = _fma_row(a_flat, a1 + p, w0, w1, s10, s11)
                s20, s21 = _fma_row(a_flat, a2 + p, w0, w1, s20, s21)
                s30, s31 = _fma_row(a_flat, a3 + p, w0, w1, s30, s31)
            sums = vsums((s00, s01, s10, s11, s20, s21, s30, s31))
            for r in range(min(4, m - i)):
                row = (i + r) * c_stride
                _store(c_flat, row + j, row + n, beta, (sums[2 * r], sums[2 * r + 1]))
    if k_vectors < a.shape[1]:
        _gemm_nt_loops(a[:, k_vectors:], b[:, k_vectors:], c, 1.0)


@njit(**JIT_OPTIONS)
def _gemm_nt_row(a, b, c, beta):
    """c = a @ b.T + beta * c for one row of a and k a whole number of vectors (``uses_row_vectors``):
    SIMD dot products, one vector of a against one of each of a group of rows of b per step, the
    group's accumulators summed together at the end.  Groups of 16 rows (``_gemm_nt_row_16``) where
    AVX-512 has the registers and b's rows are short enough (ROW_GROUP_MAX_BYTES), then groups of 8,
    whose sums are stored one by one (the last group recomputes the last row of b, stored once)."""
    n = c.shape[1]
    (a_flat, _), (b_flat, b_stride) = flat_rows(a), flat_rows(b)
    c_row = row_of(c, 0)
    lanes = lanes_of(a_flat)
    beta = c.dtype.type(beta)
    zero = vsplat(c.dtype.type(0.0))
    grouped = 0
    if VECTOR_BITS == 512 and b_stride * b.itemsize <= ROW_GROUP_MAX_BYTES:
        grouped = n - n % 16
        _gemm_nt_row_16(a_flat, a.shape[1], b_flat, b_stride, c_row, grouped, beta)
    for j in range(grouped, n, 8):
        b0, b1 = j * b_stride, min(j + 1, n - 1) * b_stride
        b2, b3 = min(j + 2, n - 1) * b_stride, min(j + 3, n - 1) * b_stride
        b4, b5 = min(j + 4, n - 1) * b_stride, min(j + 5, n - 1) * b_stride
        b6, b7 = min(j + 6, n - 1) * b_stride, min(j + 7, n - 1) * b_stride
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
        for p in range(0, a.shape[1], lanes):
            x = vload(a_flat, p)
            s0, s1 = vfma(x, vload(b_flat, b0 + p), s0), vfma(x, vload(b_flat, b1 + p), s1)
            s2, s3 = vfma(x, vload(b_flat, b2 + p), s2), vfma(x, vload(b_flat, b3 + p), s3)
            s4, s5 = vfma(x, vload(b_flat, b4 + p), s4), vfma(x, vload(b_flat, b5 + p), s5)
            s6, s7 = vfma(x, vload(b_flat, b6 + p), s6), vfma(x, vload(b_flat, b7 + p), s7)
        _store(c_row, j, n, beta, vsums((s0, s1, s2, s3, s4, s5, s6, s7)))


@njit(**JIT_OPTIONS)
def _gemm_nt_row_16(a_flat, k, b_flat, b_stride, c_row, n, beta):
    """c_row[:n] = a @ b[:n].T + beta * c_row[:n], n a multiple of 16, a and b flat (row j of b at
    j * b_stride), k a whole number of vectors: 16 rows of b at a time, their 16 sums a whole vector
    (or two) stored at once (``vsums_vectors``), where 8 rows' sums go one by one (``_store``), which
    cost as much as their dot products at small k."""
    lanes = lanes_of(a_flat)
    zero = vsplat(c_row.dtype.type(0.0))
    for j in range(0, n, 16):
        row_start = j * b_stride
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = zero
        for p in range(0, k, lanes):
            x = vload(a_flat, p)
            q = row_start + p
            s0, s1 = vfma(x, vload(b_flat, q), s0), vfma(x, vload(b_flat, q + b_stride), s1)
            s2, s3 = vfma(x, vload(b_flat, q + 2 * b_stride), s2), vfma(x, vload(b_flat, q + 3 * b_stride), s3)
            s4, s5 = vfma(x, vload(b_flat, q + 4 * b_stride), s4), vfma(x, vload(b_flat, q + 5 * b_stride), s5)
            s6, s7 = vfma(x, vload(b_flat, q + 6 * b_stride), s6), vfma(x, vload(b_flat, q + 7 * b_stride), s7)
            s8, s9 = vfma(x, vload(b_flat, q + 8 * b_stride), s8), vfma(x, vload(b_flat, q + 9 * b_stride), s9)
            s10, s11 = vfma(x, vload(b_flat, q + 10 * b_stride), s10), vfma(x, vload(b_flat, q + 11 * b_stride), s11)
            s12, s13 = vfma(x, vload(b_flat, q + 12 * b_stride), s12), vfma(x, vload(b_flat, q + 13 * b_stride), s13)
            s14, s15 = vfma(x, vload(b_flat, q + 14 * b_stride), s14), vfma(x, vload(b_flat, q + 15 * b_stride), s15)
        sums = vsums_vectors((s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15))
        for v in range(len(sums)):
            at = j + v * lanes
            vstore(c_row, at, sums[v] if beta == 0.0 else vfma(vsplat(beta), vload(c_row, at), sums[v]))


@njit(**JIT_OPTIONS)
def _scale(c, beta):
    """c *= beta, with beta == 0 meaning overwrite (as BLAS: NaN in c does not survive)."""
    if beta == 1.0:
        return
    for i in range(c.shape[0]):
        c_row = row_of(c, i)
        for j in range(c.shape[1]):
            c_row[j] = 0.0 if beta == 0.0 else beta * c_row[j]


@njit(**JIT_OPTIONS)
def _axpy4(y, x0, x1, x2, x3, w0, w1, w2, w3):
    """y += x0 * w0 + x1 * w1 + x2 * w2 + x3 * w3 (1-D arrays, scalar x)."""
    for j in range(y.shape[0]):
        y[j] += x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j]


@njit(**JIT_OPTIONS)
def _element(a, i, p, trans_a):
    """op(a)[i, p]."""
    return a[p, i] if trans_a else a[i, p]


@njit(**JIT_OPTIONS)
def _gemm_nn_loops(a, b, c, trans_a, beta):
    """c = op(a) @ b + beta * c as sums of scaled rows of b, four rows of b at a time."""
    _scale(c, beta)
    m = c.shape[0]
    k = b.shape[0]
    zero = c.dtype.type(0.0)
    for i in range(m):
        c_row = row_of(c, i)
        for p in range(0, k, 4):
            last = min(p + 3, k - 1)
            x0 = _element(a, i, p, trans_a)
            x1 = _element(a, i, p + 1, trans_a) if p + 1 <= last else zero
            x2 = _element(a, i, p + 2, trans_a) if p + 2 <= last else zero
            x3 = _element(a, i, p + 3, trans_a) if p + 3 <= last else zero
            _axpy4(c_row, x0, x1, x2, x3, row_of(b, p), row_of(b, min(p + 1, last)),
                   row_of(b, min(p + 2, last)), row_of(b, last))


@njit(**JIT_OPTIONS)
def _gemm_nn_panels(a, b, c, trans_a, beta):
    """c = op(a) @ b + beta * c: ``tiles.gemm_nn_panels`` over the whole panels of columns (a.T read
    in place), the last n % width columns as ``_gemm_nn_loops``."""
    n = c.shape[1]
    scaled = beta != 0.0 and beta != 1.0  # the panels overwrite c or add to it
    if scaled:
        _scale(c, beta)
    if trans_a:
        whole = gemm_nn_panels(a.T, b, c, beta != 0.0)
    else:
        whole = gemm_nn_panels(a, b, c, beta != 0.0)
    if whole < n:
        _gemm_nn_loops(a, b[:, whole:], c[:, whole:], trans_a, 1.0 if scaled else beta)


@njit(**JIT_OPTIONS)
def _gemm_nn_narrow(a, b, c, beta):
    """c = a @ b + beta * c on ``tiles.gemm_nn_narrow``."""
    if beta != 0.0 and beta != 1.0:
        _scale(c, beta)
    gemm_nn_narrow(a, b, c, beta != 0.0)


@njit(**JIT_OPTIONS)
def uses_narrow(n, lanes, trans_a, trans_b):
    """Whether ``gemm`` runs an (m, k) by (k, n) product as ``tiles.gemm_nn_narrow``: a @ b whose n
    columns are one or two whole vectors of ``lanes``, whatever the rows.  One thread, AMD EPYC (Zen 5),
    float32, narrow tiles / loops / BLAS (us, as (m, k, n)): 1 x 20 x 16 0.31 / 0.40 / 0.65, 2 x 64 x 16
    0.35 / 0.67 / 0.90, 4 x 128 x 32 0.61 / 2.59 / 2.30, 13 x 64 x 32 0.55 / 2.55 / 1.64, 16 x 256 x 32
    1.44 / 10.9 / 4.95, 64 x 1024 x 16 10.3 / 161 / 24.6, 3200 x 64 x 32 59 / - / 116."""
    return not trans_a and not trans_b and n % lanes == 0 and 0 < n // lanes <= NARROW_MAX_VECTORS


@njit(**JIT_OPTIONS)
def uses_row_vectors(m, k, lanes, trans_a, trans_b):
    """Whether ``gemm`` runs an (m, k) by (k, n) product as ``_gemm_nt_row``: a @ b.T with one row and a
    reduction of two or more whole vectors of ``lanes``.  Against the loops, one thread (AMD EPYC,
    medians of 7), as (m, n, k): float32 1 x 128 x 32 1.58x, 1 x 512 x 128 1.27x, 1 x 2048 x 512 1.15x;
    float64 1 x 64 x 16 1.20x, 1 x 128 x 32 1.34x, 1 x 2048 x 512 1.06x."""
    return m == 1 and trans_b and not trans_a and k >= 2 * lanes and k % lanes == 0


@njit(**JIT_OPTIONS)
def uses_vectors(m, n, k, trans_a, trans_b):
    """Whether ``gemm`` runs an (m, k) by (k, n) product as ``_gemm_nt_vectors``: a @ b.T with a few rows."""
    if trans_a or not trans_b or m < VECTORS_MIN_ROWS:
        return False
    for fewest_k, most_rows in VECTORS_MAX_ROWS:
        if k >= fewest_k:
            return m <= most_rows
    return False


@njit(**JIT_OPTIONS)
def uses_panels(m, n, k, trans_a, trans_b):
    """Whether ``gemm`` runs an (m, k) by (k, n) product as ``tiles.gemm_nn_panels``: a @ b from two
    rows, a.T @ b whatever the rows (over a reduction: an empty one leaves c to the loops)."""
    if trans_b or n < PANELS_MIN_COLUMNS or k == 0:
        return False
    return trans_a or (m >= 2 and (n % PANELS_MIN_COLUMNS == 0 or m <= PANELS_MAX_ROWS_PARTIAL))


@njit(**JIT_OPTIONS)
def uses_blas(m, n, k, trans_a, trans_b, lanes):
    """Whether ``gemm`` hands an (m, k) by (k, n) product to BLAS rather than to compiled loops (``lanes``:
    of the arrays' dtype)."""
    small = m * n * k < BLAS_MIN_WORK or (m <= LOOPS_MAX_ROWS and not trans_a)
    return ((not small or (trans_a and trans_b)) and not uses_vectors(m, n, k, trans_a, trans_b)
            and not uses_panels(m, n, k, trans_a, trans_b) and not uses_narrow(n, lanes, trans_a, trans_b))


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
    if uses_row_vectors(m, k, lanes_of(c), trans_a, trans_b):
        _gemm_nt_row(a, b, c, beta)
    elif uses_vectors(m, n, k, trans_a, trans_b):
        _gemm_nt_vectors(a, b, c, beta)
    elif uses_panels(m, n, k, trans_a, trans_b):
        _gemm_nn_panels(a, b, c, trans_a, beta)
    elif uses_narrow(n, lanes_of(c), trans_a, trans_b):
        _gemm_nn_narrow(a, b, c, beta)
    elif uses_blas(m, n, k, trans_a, trans_b, lanes_of(c)):
        _gemm_blas(a, b, c, trans_a, trans_b, beta, m, n, k)
    elif trans_b:
        _gemm_nt_loops(a, b, c, beta)
    else:
        _gemm_nn_loops(a, b, c, trans_a, beta)


@functools.cache
def _blas_thread_counts():
    """(get, set) of the thread count of every BLAS library loaded (SciPy's among them), found once
    through threadpoolctl.  A pthreads OpenBLAS's own entry points are called directly:
    threadpoolctl's methods around them (which also let only one Python thread set the count)
    cost 5-6 us per guarded call in a 0.2 ms LSTM call, against 2-3 us (L10 N8 H128 forward)."""
    from threadpoolctl import ThreadpoolController

    counts = []
    for controller in ThreadpoolController().select(user_api="blas").lib_controllers:
        getter, setter = controller.get_num_threads, controller.set_num_threads
        symbol = getattr(controller, "_get_symbol", None)  # threadpoolctl's, not public
        if symbol and controller.internal_api == "openblas" and controller.threading_layer != "openmp":
            getter = symbol("openblas_get_num_threads") or getter
            setter = symbol("openblas_set_num_threads") or setter
        counts.append((getter, setter))
    return tuple(counts)


class single_threaded_blas:
    """``with single_threaded_blas():`` runs the body with BLAS on one thread and restores the
    previous thread counts.

    ``cython_blas`` hides which library it wraps, so every loaded BLAS is
    limited (the kernels call no other BLAS while this is in force).
    """

    __slots__ = ("_restore",)

    def __enter__(self):
        self._restore = [(setter, count) for getter, setter in _blas_thread_counts() if (count := getter()) != 1]
        for setter, _ in self._restore:
            setter(1)
        return self

    def __exit__(self, *exc_info):
        for setter, count in self._restore:
            setter(count)
