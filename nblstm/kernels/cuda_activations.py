"""sigmoid and tanh for every CUDA kernel: the one definition (device functions).

On the GPU ``math.exp`` and ``math.tanh`` compile to CUDA's libdevice
(``expf``/``tanhf`` for float32, ``exp``/``tanh`` for float64), accurate to a
few ulp, so no polynomial of our own is needed as on the CPU.  sigmoid takes
the exponential of -|x| only, so it never overflows: 1 / (1 + e) for x >= 0,
e / (1 + e) below.  NaN propagates (NaN >= 0 is false and exp(NaN) is NaN);
+-inf give the exact limits.
"""
import math

from numba import cuda

from .cuda_common import ONE


@cuda.jit(device=True)
def sigmoid(x):
    """1 / (1 + exp(-x)) for a float32 or float64 scalar, in that precision."""
    e = math.exp(-abs(x))
    return ONE / (ONE + e) if x >= 0 else e / (ONE + e)


@cuda.jit(device=True)
def tanh(x):
    """tanh(x) for a float32 or float64 scalar, in that precision."""
    return math.tanh(x)
