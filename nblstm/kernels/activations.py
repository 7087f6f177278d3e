"""Vectorisable sigmoid and tanh for every CPU kernel: the one definition.

The pip build of llvmlite has no SVML, so ``math.exp``/``math.tanh`` in a loop
are scalar library calls that stop LLVM from vectorising the gate math.  These
versions use only multiplies, adds, one division, selects and a bit cast, so a
loop over hidden units compiles to packed (AVX2/AVX-512) instructions.

Method (Cephes): exp(x) = 2**n * exp(r) with n = round(x / ln 2) and
r = x - n ln 2 (two-part Cody-Waite constant); exp(r) by a degree-6
polynomial (float32) or the (3, 3) Pade form (float64); 2**n built from its
exponent bits.  tanh uses a small odd polynomial for |x| < 0.625 and
1 - 2 / (exp(2|x|) + 1) above; sigmoid is 1 / (1 + exp(-x)).

Error bound, checked by ``tests/test_kernels.py`` against an extended-precision
reference over the whole range: tanh and sigmoid are within 4 ulp of the
correctly rounded result (away from underflow), in float32 and float64, and
sigmoid's absolute error is below 1e-7 (float32) / 2e-16 (float64) everywhere.  NaN propagates;
+-inf give the exact limits (0, 1 or +-1).
"""
import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

from .._config import ACTIVATION_FASTMATH

_JIT_OPTIONS = {"fastmath": ACTIVATION_FASTMATH, "error_model": "numpy"}
_helper = njit(**_JIT_OPTIONS)


@intrinsic
def _bits_as_float(typingctx, bits):
    """Reinterpret int32 bits as float32 (int64 as float64); compiles to no instruction at all."""
    float_type = {types.int32: types.float32, types.int64: types.float64}.get(bits)
    if float_type is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(float_type))

    return float_type(bits), codegen


def _float_consts(dtype):
    """Constants of one float type, as NumPy scalars so Numba freezes them with that type."""
    f = dtype.type
    if dtype == np.float32:
        return dict(
            int_type=np.int32, mantissa_bits=np.int32(23), exponent_bias=np.int32(127),
            exp_max=f(88.0), exp_min=f(-87.0), ln2_hi=f(0.693359375), ln2_lo=f(-2.12194440e-4),
            tanh_limit=f(10.0), sigmoid_limit=f(80.0),
            # Cephes expf: exp(r) ~ 1 + r + r^2 * P(r), |r| <= ln(2)/2
            exp_p=tuple(f(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                       4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)),
            # Cephes tanhf: tanh(x) ~ x + x^3 * P(x^2), |x| < 0.625
            tanh_p=tuple(f(c) for c in (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                                        1.33314422036e-1, -3.33332819422e-1)),
            tanh_q=(),
        )
    return dict(
        int_type=np.int64, mantissa_bits=np.int64(52), exponent_bias=np.int64(1023),
        exp_max=f(709.0), exp_min=f(-708.0), ln2_hi=f(6.93145751953125e-1), ln2_lo=f(1.42860682030941723212e-6),
        tanh_limit=f(20.0), sigmoid_limit=f(700.0),
        # Cephes exp: exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2))
        exp_p=tuple(f(c) for c in (1.26177193074810590878e-4, 3.02994407707441961300e-2,
                                   9.99999999999999999910e-1)),
        exp_q=tuple(f(c) for c in (3.00198505138664455042e-6, 2.52448340349684104192e-3,
                                   2.27265548208155028766e-1, 2.00000000000000000009e0)),
        # Cephes tanh: tanh(x) ~ x + x^3 * P(x^2) / Q(x^2), |x| < 0.625
        tanh_p=tuple(f(c) for c in (-9.64399179425052238628e-1, -9.92877231001918586564e1,
                                    -1.61468768441708447952e3)),
        tanh_q=tuple(f(c) for c in (1.0, 1.12811678491632931402e2, 2.23548839060100448583e3,
                                    4.84406305325125486048e3)),
    )


def _float_dtype(numba_type):
    if numba_type == types.float32:
        return np.dtype(np.float32)
    if numba_type == types.float64:
        return np.dtype(np.float64)
    return None


def _make_exp(dtype):
    """exp for one float dtype; the argument must already lie in [exp_min, exp_max] or be NaN."""
    k = _float_consts(dtype)
    f = dtype.type
    int_type, mantissa_bits, exponent_bias = k["int_type"], k["mantissa_bits"], k["exponent_bias"]
    ln2_hi, ln2_lo = k["ln2_hi"], k["ln2_lo"]
    log2e, half, one, two = f(1.4426950408889634), f(0.5), f(1.0), f(2.0)

    if dtype == np.float32:
        p0, p1, p2, p3, p4, p5 = k["exp_p"]

        @_helper
        def exp_reduced(r):
            r2 = r * r
            return ((((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * r2 + r) + one
    else:
        p0, p1, p2 = k["exp_p"]
        q0, q1, q2, q3 = k["exp_q"]

        @_helper
        def exp_reduced(r):
            r2 = r * r
            rp = r * ((p0 * r2 + p1) * r2 + p2)
            return one + two * rp / ((((q0 * r2 + q1) * r2 + q2) * r2 + q3) - rp)

    @_helper
    def exp_in_range(x):
        n = np.floor(x * log2e + half)
        r = (x - n * ln2_hi) - n * ln2_lo
        scale = _bits_as_float(int_type((int_type(n) + exponent_bias) << mantissa_bits))
        return exp_reduced(r) * scale

    return exp_in_range


@_helper
def _clamp(x, low, high):
    """min(max(x, low), high) that keeps NaN (a plain min/max would turn NaN into a bound)."""
    x = low if x < low else x
    return high if x > high else x


def sigmoid(x):
    """1 / (1 + exp(-x)) for a float32 or float64 scalar inside a Numba kernel."""
    raise NotImplementedError("nblstm.kernels.activations.sigmoid is only callable from Numba code")


def tanh(x):
    """tanh(x) for a float32 or float64 scalar inside a Numba kernel."""
    raise NotImplementedError("nblstm.kernels.activations.tanh is only callable from Numba code")


@overload(sigmoid, jit_options=_JIT_OPTIONS)
def _sigmoid_impl(x):
    dtype = _float_dtype(x)
    if dtype is None:
        return None
    exp_in_range = _make_exp(dtype)
    limit = _float_consts(dtype)["sigmoid_limit"]
    one = dtype.type(1.0)

    def impl(x):
        result = one / (one + exp_in_range(-_clamp(x, -limit, limit)))
        return x if x != x else result

    return impl


@overload(tanh, jit_options=_JIT_OPTIONS)
def _tanh_impl(x):
    dtype = _float_dtype(x)
    if dtype is None:
        return None
    k = _float_consts(dtype)
    exp_in_range = _make_exp(dtype)
    f = dtype.type
    limit, small, one, two, zero = k["tanh_limit"], f(0.625), f(1.0), f(2.0), f(0.0)
    tanh_p, tanh_q = k["tanh_p"], k["tanh_q"]

    if dtype == np.float32:
        p0, p1, p2, p3, p4 = tanh_p

        @_helper
        def tanh_small(x, z):
            return x + x * z * ((((p0 * z + p1) * z + p2) * z + p3) * z + p4)
    else:
        p0, p1, p2 = tanh_p
        q0, q1, q2, q3 = tanh_q

        @_helper
        def tanh_small(x, z):
            return x + x * z * (((p0 * z + p1) * z + p2) / (((q0 * z + q1) * z + q2) * z + q3))

    def impl(x):
        a = _clamp(abs(x), zero, limit)
        large = one - two / (exp_in_range(two * a) + one)
        large = -large if x < zero else large
        result = tanh_small(x, x * x) if a < small else large
        return x if x != x else result

    return impl
