"""The engine's CUDA backend: Numba device arrays, a launch plan and the numba.cuda layer kernels.

``nblstm.engine`` runs a whole LSTM over a backend object; this one keeps
every array on the GPU and hands the engine the kernels of
``nblstm.kernels.cuda_forward`` / ``cuda_backward``.  It also has the few
conversions the API needs at its boundary (host <-> device, device views of
other libraries' arrays, batch-first transposes).  Importing it imports
numba.cuda: go through ``nblstm.cuda.backend()``, which checks for a device first.

The thread-block sizes are module constants read at every call, so tests can
shrink them and make tiny inputs span several blocks.
"""
import contextlib
import functools
from dataclasses import dataclass

import numpy as np
from numba import cuda

from .engine import CPUBackend
from .kernels.cuda_backward import lstm_layer_backward
from .kernels.cuda_common import (
    ADD,
    MULTIPLY,
    as_rows,
    elementwise,
    flat_launch,
    swap_leading_axes_kernel,
)
from .kernels.cuda_common import zeros as device_zeros  # the backend's own zeros() takes no plan
from .kernels.cuda_forward import lstm_layer_forward
from .params import NUM_GATES

# Edge of the square thread blocks of the tiled kernels (at most kernels.cuda_common.MAX_TILE).
TILE = 16
# Threads per block of the persistent and element-wise kernels.
THREADS = 256
# Batches up to this size run the recurrence as persistent kernels when their weights fit
# in shared memory; larger ones launch kernels per step, whose cost is mostly the host's
# (about 0.6 ms a step on an H200 forward, whatever the batch).  Measured there with
# tools/cuda_designs.py (e7c5d8d, float32, L100 I128, persistent against per-step ms):
# batch 256 hidden 128 fwd 18.7 / 56.2, train 21.2 / 92.2; hidden 512 fwd 35.3 / 48.9,
# train 137 / 166; batch 512 hidden 512 train 271 / 206 (per-step ahead), fwd 69.5 / 87.9.
PERSISTENT_MAX_BATCH = 256
# In inference the input projection runs over blocks of time steps whose gates take at most
# this many bytes (every step at once for most inputs): each block costs the host a launch of
# the product and one of the recurrence, about 0.2 ms each on an H200, whatever its size.
INFERENCE_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class CUDAPlan:
    """How the CUDA kernels of one LSTM call are launched (the kernels' ``plan``).

    tile:       edge of the (tile, tile) thread blocks of the tiled products and per-step kernels
    threads:    threads per block of the persistent and element-wise kernels
    persistent: try the persistent (one launch per sequence) recurrence first
    """

    tile: int
    threads: int
    persistent: bool


def _plan(persistent=False):
    return CUDAPlan(TILE, THREADS, persistent)


class CUDABackend:
    """Runs the engine on Numba device arrays with the numba.cuda kernels (see ``engine.CPUBackend``)."""

    name = "cuda"
    layer_forward = staticmethod(lstm_layer_forward)
    layer_backward = staticmethod(lstm_layer_backward)

    @staticmethod
    def empty(shape, dtype):
        return cuda.device_array(shape, dtype)

    @staticmethod
    def allocator(shape, dtype):
        """``empty(shape, dtype)`` as a function of no arguments."""
        return functools.partial(CUDABackend.empty, shape, dtype)

    @staticmethod
    def zeros(shape, dtype):
        return device_zeros(shape, dtype, _plan())

    @staticmethod
    def unpacked_weights(dtype):
        """The CUDA forward kernel takes no packed weights (the CPU's last three arguments)."""
        return ()

    @staticmethod
    def plan(seq_len, batch, hidden, state, training, zero_start=False, input_size=0, prepacked=False):
        return _plan(persistent=batch <= PERSISTENT_MAX_BATCH)

    @staticmethod
    def plan_settings(batch, hidden, state):
        """``plan`` reads no settings the caller may change."""
        return ()

    @staticmethod
    def inference_block_rows(gate_columns, dtype):
        """(time, batch) rows of a block of inference steps: as many as ``INFERENCE_BLOCK_BYTES`` of gates hold."""
        return INFERENCE_BLOCK_BYTES // (gate_columns * np.dtype(dtype).itemsize)

    @staticmethod
    def gate_columns(hidden, dtype, plan):
        """Width of a row of gates: the CUDA kernels keep PyTorch's layout (i, f, g, o blocks)."""
        return NUM_GATES * hidden

    @staticmethod
    def forward_calls_blas(plan, weights, rows):
        return False

    @staticmethod
    def guard(plan, blas_inside=True, product_work=0):
        return contextlib.nullcontext()

    @staticmethod
    def _apply(op, a, b, out):
        elementwise(op, as_rows(a), as_rows(b), as_rows(out), _plan())
        return out

    def add(self, a, b):
        return self._apply(ADD, a, b, cuda.device_array(a.shape, a.dtype))

    def multiply(self, a, b):
        return self._apply(MULTIPLY, a, b, cuda.device_array(a.shape, a.dtype))

    def multiply_into(self, total, factor):
        self._apply(MULTIPLY, total, factor, total)

    @staticmethod
    def dropout_mask(shape, p, dtype, rng):
        """The CPU backend's mask, drawn from the same host generator and copied in, so a
        seeded model drops the same units on either device."""
        return cuda.to_device(CPUBackend.dropout_mask(shape, p, dtype, rng))

    # -- the API's boundary ------------------------------------------------------------
    @staticmethod
    def from_host(array):
        """A device copy of a NumPy array."""
        return cuda.to_device(array)

    @staticmethod
    def to_host(array):
        """A NumPy copy of a device array."""
        return array.copy_to_host()

    @staticmethod
    def device_view(value):
        """A Numba device array viewing ``value`` (no copy) if it lives on the GPU, else None.

        GPU arrays are Numba device arrays and anything with ``__cuda_array_interface__``
        (CuPy arrays, PyTorch CUDA tensors, which are detached first).
        """
        if getattr(value, "__cuda_ndarray__", False):
            return value
        if hasattr(value, "detach"):
            value = value.detach()
        if hasattr(value, "__cuda_array_interface__"):
            return cuda.as_cuda_array(value)
        return None

    @staticmethod
    def contiguous(array, dtype):
        """``array`` (a device array) itself if C-contiguous in ``dtype``, else a converted device copy."""
        if array.dtype == dtype and array.is_c_contiguous():
            return array
        copy = cuda.device_array(array.shape, dtype)
        copy[:] = array
        return copy

    @staticmethod
    def swap_leading_axes(array):
        """A C-contiguous (B, A, F) device copy of an (A, B, F) device array."""
        swapped = cuda.device_array((array.shape[1], array.shape[0], array.shape[2]), array.dtype)
        if array.size:
            swap_leading_axes_kernel[flat_launch(array.size, _plan())](array, swapped)
        return swapped


CUDA = CUDABackend()
