"""Runs a whole LSTM on a backend (the Numba CPU kernels, or the CUDA ones): layers and directions
orchestrated once per call.

A stacked or bidirectional LSTM is a sequence of single-direction runs of one
kernel (``lstm_layer_forward``), each writing its half of the layer's output
in place.  Everything inside the time loop is compiled; this module only
allocates arrays, picks the thread split and walks the layers.

Arrays here are time-major and C-contiguous in the model's dtype: the API
(``nblstm.api``) validates and converts user input before calling in.
"""
import contextlib
import functools
import math
from dataclasses import dataclass, field

import numba
import numpy as np
from numba.np.ufunc import parallel as numba_parallel

from .kernels.blas import single_threaded_blas, uses_blas
from .kernels.cpu_backward import lstm_layer_backward
from .kernels.cpu_forward import (PLAIN_INPUT_MAX_ROWS, calls_blas, lstm_layer_forward, new_packed_weights,
                                  pack_layer_weights)
from .kernels.packed import gate_columns, packs_weights
from .kernels.parallel import CACHE_LINE, cache_line_offset
from .kernels.parallel import matmul as parallel_matmul
from .kernels.simd import vector_lanes
from .params import NUM_GATES
from . import placement
from .placement import runs_together

# A time step with fewer multiply-adds than this runs on one thread: opening a
# parallel region and meeting at its end cost more than the split saves
# (measured on 2 cores: 0.5x at 16K, 0.84x at 64K, 1.1x at 256K, 1.45x at 2M).
PARALLEL_MIN_WORK = 1 << 18
# ... but from this many in calls of NEAR_SPLIT_MIN_STEPS steps or more whose threads run in one region
# near each other (``placement.far_apart`` false).  Measured on 2 vCPUs of an AMD EPYC (Zen 4), one process,
# every plan of a call forced in turn for 9 minutes, each sample binned by the threads' meeting time right
# after it (near: 77-112 ns), input 32, medians (ms), one thread / the units split: forward L100 N1 H128
# 0.333 / 0.253 (1.31x), L30 0.118 / 0.099-0.104, L20 0.088 / 0.081, L10 0.056 / 0.059 (packed; 0.049 as
# they are), L100 N1 H192 0.680 / 0.530, L20 N1 H192 0.171 / 0.141, L100 N2 H128 0.396 / 0.314, L100 N4 H64
# 0.254 / 0.247; training L100 N1 H128 0.883 / 0.593, L30 0.298 / 0.243; none at L100 N1 H96 (37K: 0.195 /
# 0.205) nor at L3-L5 N1 H128.
NEAR_PARALLEL_MIN_WORK = 1 << 16
NEAR_SPLIT_MIN_STEPS = 20
# Threads far apart (``placement.far_apart``) split the units of a step only with this many state units or
# more: the meeting and the exchange of each step's output then cost far more (the same runs, far: 320-405
# ns; one thread / the units split, ms): forward L100 N4 H128 0.725 / 1.042 (near 0.713 / 0.512), L10 N4
# H128 0.096 / 0.183, L100 N4 H160 1.090 / 1.789, H192 1.517 / 1.954, H224 2.014 / 2.373, L10 N4 H256 0.281 /
# 0.332-0.345; training L100 N4 H128 2.158 / 2.636, L10 N4 H128 0.275 / 0.408, L100 N4 H192 4.567 / 4.731;
# still faster split: L100 N1 H256 1.235 / 1.037, L100 N2 H256 1.538 / 1.435, L100 N4 H256 2.47-2.66 /
# 2.55-2.58, H320 4.060 / 3.692, H384 5.572 / 4.400; training L100 N4 H256 7.591 / 6.405.
FAR_UNITS_SPLIT_MIN_STATE = 256

# A matrix product of this many multiply-adds or more runs on BLAS's own threads (OpenBLAS's default
# threshold: 65536 x GEMM_MULTITHREAD_THRESHOLD, 4).  Inside a kernel on one thread, those threads
# would wait for cores that threads still spinning after an earlier parallel region hold (Numba's,
# or NumPy's BLAS): a training call of L1000 N1 I32 H64 took 1.46 ms alone, 4.0 right after an
# ``engine.matmul`` and 3.9 right after a NumPy 256 x 256 product; with BLAS on one thread inside
# it, 1.5-1.6 ms in all three (at L100: 0.20 ms alone, 3.9 after the NumPy product, 0.20 guarded).
BLAS_THREADS_MIN_WORK = 1 << 18

# Recurrent weights up to this size stay in one core's cache between steps (a
# conservative share of the 1-2 MiB L2 caches of current x86 cores).
CACHE_BYTES_PER_THREAD = 1 << 20
# Inference also splits the batch with up to this many bytes of recurrent weights (float32 up to
# hidden 512; counted as float32, as CACHE_BYTES_PER_THREAD): each thread then streams its own packed
# copy from the shared L3 cache at every step, where splitting the units would read half of them
# but meet at a barrier after every step.  Measured on 2 vCPUs of an AMD EPYC (Zen 4, 1 MiB of L2 a
# core, 32 MiB of L3), one process, the two plans alternated 7x, input 32, time of the units split /
# the batch split: hidden 384 1.01-1.14x (L10-L100, N8-N64), hidden 512 0.95-1.04x in the machine's
# fast state and 1.13-1.28x in its slow one, where two-thread calls ran up to 1.3x slower and the
# units split lost twice as much as the batch split (L100 N64: 91-98 / 80-85 ms against 71-77 /
# 71-77; one thread 135-151 ms in both); hidden 768 (9 MiB) 0.80-0.95x, so it stays units.  With
# input 512, hidden 512: L100 N64 1.10x, L10 N64 1.08x.  Training keeps the L2 bound (hidden 384-512,
# L10-L100, N8-N64: 0.93-1.06x).
INFERENCE_BATCH_SPLIT_MAX_BYTES = 4 << 20
# Inference splits the batch only from (weights / this) ** 2 rows (seq_len * batch), and then packs the
# weights even for one step; with fewer rows, splitting the hidden units, where each thread packs or
# reads half of the weights, was faster.  Measured on 2 cores (one process, the rule's plan and the
# batch split alternated 8x, medians of 400 calls, threads that split the batch packing their own
# copies); the rows needed grow with the square of the weights: hidden 256 (88 rows): units 2x at
# L1 N8, 1.3x at L2 N8, 1.16x at L4 N8, 1.07x at L8 N8, batch split 1.1x at L20 N8; hidden 224 (51):
# batch split 1.09x at L4 N8 (missed), 1.18x at L7 N8; hidden 192 (28): units 1.37x at L1 N8, 1.19x at
# L2 N8, 1.07x at L1 N16, batch split 1.14x at L4 N8, 1.04x at L1 N32; hidden 160 (13): even at L1 N8,
# batch split 1.09x at L2 N8; hidden 128 (6): even at L1 N8 and N12, batch split 1.06-1.19x at L2 N8
# and 1.23-1.28x at L1 N16.
BATCH_SPLIT_WEIGHTS_SCALE = 28_000
# ... and from two steps with this many batch rows per thread, whatever the weights (one process, the
# rule's plan and the batch split alternated 8x, medians of 400 calls, 2 threads: L2 N16 H192 153 ->
# 113 us, L2 N16 H256 253 -> 223, L2 N32 H256 366 -> 295, L4 N16 H256 357 -> 370, even in whole calls
# alternated 3x; at batch 8 the units split stayed faster, L2 N8 H256 122 against 163 us).
BATCH_SPLIT_ROWS_PER_THREAD = 8
# A one-step inference call from zero states multiplies only its inputs (batch x 4 hidden x inputs
# multiply-adds); below this many it runs on one thread (separate processes, 2 runs each, input 32:
# 2^17 at L1 N8 H128 27.2-29.3 -> 23.1-23.6 us, 2^18 at L1 N16 H128 34.0-35.1 -> 29.6-29.7 and L1 N64
# H32 30.9-31.7 -> 27.2-27.3; even at 2^19, L1 N32 H128, N64 H64, N16 H256).
ONE_STEP_SPLIT_MIN_WORK = 1 << 19
# ... and on one thread it packs w_ih for its product (a panel product rather than the plain one)
# from PLAIN_INPUT_MAX_ROWS + 1 rows, with up to this many inputs (the widest layer's).  Measured
# (one process, the two plans alternated 7x, medians of 200 calls; packed / plain, us): input 32: L1
# N5 H128 9.8 / 13.3, N6 H64 7.8 / 9.0, N8 H32 6.9 / 7.6, N8 H128 11.2 / 16.6, N16 H128 15.4 / 22.0, N32
# H64 15.1 / 20.2; input 16 N64 H64 24.1 / 28.5; input 64 N8 H128 13.9 / 17.2; input 128 N8 H128 18.5 /
# 18.5; input 256 N8 H128 31.5 / 27.6.
ONE_STEP_PACKED_MAX_INPUT = 64

# Threads that split the batch each take at least this many rows (a register tile).
BATCH_PART_MIN_ROWS = 4
# An inference call whose steps are too small to split (``thread_parts``) still splits its batch from
# this many multiply-adds in all (seq_len x batch x 4 hidden x (input + state)): each thread runs its
# rows through every step without meeting the other, so only the call's one parallel region is paid.
# Measured on 2 cores, input 32, one process, both plans alternated 9x (medians of 100-200 calls):
# hidden 32, batch 8: 0.95-1.00x at 10 steps (655K), 1.01-1.04x at 15 (983K), 1.07-1.12x at 20,
# 1.17x at 30, 1.27-1.33x at 100 (122 -> 96 us); batch 12 1.25x and batch 16 1.48x at 100 steps, 1.18x
# at 10; batch 32 1.18x at 5 steps; hidden 16, batch 8: 1.20x at 50 steps; hidden 64 1.12x at 10 steps;
# hidden 80 1.49x at 100.  Only up to SMALL_STEPS_BATCH_SPLIT_MAX_INPUT inputs (input 128, hidden 32,
# batch 8: 0.83x at 10 steps and 1.04x at 100 with the projection in BLAS; 0.68x and 0.79x with each
# thread projecting its own rows).
SMALL_STEPS_BATCH_SPLIT_MIN_WORK = 1 << 20
SMALL_STEPS_BATCH_SPLIT_MAX_INPUT = 64
# Training splits such a call's batch from this many multiply-adds (its forward's), whatever its input:
# the backward's threads then run their rows through every step on their own too, and split the
# reductions of the weight gradients (``kernels.parallel.splits_reduction``).  Measured on 2 cores of an
# AMD EPYC (Zen 5), forward + backward, one process, both plans alternated 5x, BLAS on one thread, rule
# -> batch split (us): input 32, L100 N64 H16 1295 -> 858, L100 N256 H16 5419 -> 2971, L100 N32 H32 1318
# -> 752, L100 N8 H16 188 -> 159, L100 N8 H64 768 -> 501, L10 N64 H16 156 -> 113, L10 N16 H32 108 -> 85,
# L10 N8 H64 110 -> 95, L20 N8 H16 77 -> 65, L10 N8 H32 (655K) 66 -> 62, L3 N32 H32 86 -> 66; input
# 128-512: L100 N16 I128 H32 1110 -> 677, L10 N16 I256 H32 242 -> 158, L10 N8 I128 H32 88 -> 75, L100 N8
# I512 H16 820 -> 513; and below: L2 N8 H64 (393K) 48 -> 50, L1 N16 H64 (393K) 50 -> 49, L3 N8 H32 41 ->
# 41, L10 N8 H16 (246K) 43 -> 51, L1 N8 H32 27 -> 35, L1 N256 H16 (786K) 99 -> 97.
TRAINING_BATCH_SPLIT_MIN_WORK = 1 << 19

# With weights packed before the call (``CPUBackend.plan``'s prepacked), inference runs on them at
# any length, but for calls of up to this many (time, batch) rows whose hidden size is not a whole
# number of vectors (of float32, and so of float64): there the padded gates and the padded copy of
# w_ih their few rows are projected on cost more than plain products.  Measured on 2 cores (AVX-512),
# one process, the rules alternated 7x, input 32, from zero states (z) or given ones (s): packed /
# plain L1 N1 H20 s 7.1 / 6.6 us, L1 N2 H20 s 7.3 / 6.8, L2 N1 H20 s 7.4 / 7.0, L1 N1 H24 s 7.2 / 6.8,
# L1 N1 H8 s 6.5 / 6.2; and faster from 8 rows or whole vectors: L1 N8 H20 s 7.4 / 8.5, L1 N8 H128 z
# 8.9 / 14.7, L1 N16 H128 z 12.2 / 20.3, L1 N64 H32 z 13.0 / 17.9, L1 N1 H128 s 8.5 / 9.6, L2 N1 H128 s
# 11.5 / 12.9, L1 N1 H48 s 6.8 / 7.1, L3 N4 H256 s 55.8 / 84.4, L1 N2 I256 H1024 s 185 / 238.
PREPACKED_PLAIN_MAX_ROWS = PLAIN_INPUT_MAX_ROWS

# In inference the CPU's input projection runs over blocks of time steps holding
# about this many (time, batch) rows, so memory does not grow with seq_len.
INFERENCE_BLOCK_ROWS = 512


def reads_recurrent_weights(seq_len, training, zero_start):
    """Whether a forward reads w_hh: not a one-step inference call from zero states (``zero_start``: the
    caller gave none), whose only step skips its product (``adds_recurrent_product``)."""
    return not (zero_start and seq_len == 1 and not training)


def widest_layer_input(config):
    """The most features a layer reads: input_size, or the D*state outputs of the layer below."""
    return max(config.input_size, config.num_directions * config.state_size if config.num_layers > 1 else 0)


def largest_product(config, seq_len, batch):
    """Multiply-adds of the largest matrix product over a call's (time, batch) rows (an input
    projection or a weight gradient): 4 hidden columns by the widest layer input or hidden (state
    is no wider)."""
    return seq_len * batch * NUM_GATES * config.hidden_size * max(widest_layer_input(config), config.hidden_size)


def step_work(batch, hidden, state):
    """Multiply-adds of a time step's recurrent product, h_{t-1} @ w_hh.T: what decides whether threads split it."""
    return batch * NUM_GATES * hidden * state


def splits_steps(seq_len, batch, hidden, state, near=False):
    """Whether a time step has the work to split between threads: ``PARALLEL_MIN_WORK``, or in a call of
    ``NEAR_SPLIT_MIN_STEPS`` whose threads meet in one region near each other (``near``),
    ``NEAR_PARALLEL_MIN_WORK``."""
    work = step_work(batch, hidden, state)
    return work >= PARALLEL_MIN_WORK or (near and seq_len >= NEAR_SPLIT_MIN_STEPS and work >= NEAR_PARALLEL_MIN_WORK)


def thread_parts(seq_len, batch, hidden, state, near=False):
    """How many threads to split each time step between (``splits_steps``)."""
    return unit_parts(hidden) if splits_steps(seq_len, batch, hidden, state, near) else 1


def unit_parts(hidden):
    """How many threads may split a step's hidden units: all of them, but 16 units at least each."""
    return max(1, min(numba.get_num_threads(), math.ceil(hidden / 16)))


def batch_parts(batch):
    """How many threads may split the batch: all of them, but BATCH_PART_MIN_ROWS rows at least each."""
    return min(numba.get_num_threads(), batch // BATCH_PART_MIN_ROWS)


def _thread_settings_reader(c_functions=numba_parallel):
    """A function returning (numba.get_num_threads(), numba.get_parallel_chunksize()): the two C
    functions behind them where this Numba has them (in ``c_functions``, its module), 0.18 us against
    1.0 (the public functions take two locks each time to make sure the threads were launched,
    which ``kernels.parallel`` did at import)."""
    get_threads = getattr(c_functions, "_get_num_threads", None)
    get_chunksize = getattr(c_functions, "_get_parallel_chunksize", None)
    if callable(get_threads) and callable(get_chunksize):
        return lambda: (get_threads(), get_chunksize())
    return lambda: (numba.get_num_threads(), numba.get_parallel_chunksize())


thread_settings = _thread_settings_reader()


def matmul(a, b, c, trans_a=False, trans_b=False, beta=0.0):
    """c = op(a) @ op(b) + beta * c (op(x) = x.T if trans_x) on Numba's threads, BLAS on one thread
    inside them; every array 2-D with a contiguous last axis.  For the layers around an LSTM.

    NumPy's ``@`` runs on BLAS's own threads, which spin for a while after the product (OpenBLAS,
    here: 10-30 ms) and take the cores from the next LSTM call's threads: measured on 2 cores,
    an L10 N8 H128 forward took 0.18 ms alone and 4.1 ms right after a 256x256 NumPy product
    (PyTorch's LSTM likewise 0.26 -> 4.2 ms); with BLAS on one thread, 0.21 ms.
    """
    _check_product(a, b, c, trans_a, trans_b)
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    n_parts = 1 if m * n * k < PARALLEL_MIN_WORK else numba.get_num_threads()
    with single_threaded_blas() if uses_blas(m, n, k, trans_a, trans_b, vector_lanes(c.dtype)) else _NO_GUARD:
        parallel_matmul(a, b, c, trans_a, trans_b, beta, n_parts)


def _check_product(a, b, c, trans_a, trans_b):
    """ValueError/TypeError unless ``matmul`` can run on these arrays (its kernels check nothing)."""
    for name, array in {"a": a, "b": b, "c": c}.items():
        if not isinstance(array, np.ndarray) or array.ndim != 2:
            given = f"{array.ndim}-D" if isinstance(array, np.ndarray) else type(array).__name__
            raise ValueError(f"matmul: {name} must be a 2-D NumPy array, got {given}")
        if array.dtype not in (np.float32, np.float64) or array.dtype != c.dtype:
            raise TypeError(f"matmul: a, b and c must share one dtype, float32 or float64; got "
                            f"{a.dtype}, {b.dtype}, {c.dtype}")
        if array.shape[1] > 1 and array.strides[1] != array.itemsize:
            raise ValueError(f"matmul: {name} must have a contiguous last axis (strides {array.strides})")
    if not c.flags.writeable:
        raise ValueError("matmul: c is read-only")
    (m, k), (k_b, n) = a.shape[::-1] if trans_a else a.shape, b.shape[::-1] if trans_b else b.shape
    if k != k_b or c.shape != (m, n):
        raise ValueError(f"matmul: op(a) {(m, k)} @ op(b) {(k_b, n)} does not fit c {c.shape}")


# Arrays of at least this many bytes start on a cache-line boundary: two threads
# writing either side of a part boundary in a misaligned row would share a cache
# line and slow each other down (measured: 12% of a step at batch 64, hidden 256).
ALIGN_MIN_BYTES = 1 << 14


def empty_aligned(shape, dtype):
    """np.empty, starting on a cache-line boundary when large."""
    size = math.prod(shape) if isinstance(shape, tuple) else int(np.prod(shape))  # an int shape too
    if size * 8 < ALIGN_MIN_BYTES:  # small whatever the dtype (8 bytes, the widest): spares np.dtype()
        return np.empty(shape, dtype)
    dtype = np.dtype(dtype)
    nbytes = size * dtype.itemsize
    if nbytes < ALIGN_MIN_BYTES:
        return np.empty(shape, dtype)
    raw = np.empty(nbytes + CACHE_LINE, np.uint8)
    return np.ndarray(shape, dtype, raw, cache_line_offset(raw))


def empty_allocator(shape, dtype):
    """A function of no arguments returning a new ``empty_aligned(shape, dtype)``: np.empty itself
    for a small array, which spares each call the size check (0.1-0.16 us an array)."""
    small = math.prod(shape) * np.dtype(dtype).itemsize < ALIGN_MIN_BYTES
    return functools.partial(np.empty if small else empty_aligned, shape, dtype)


def zeros_aligned(shape, dtype):
    """np.zeros, starting on a cache-line boundary when large."""
    array = empty_aligned(shape, dtype)
    array.fill(0)
    return array


_NO_GUARD = contextlib.nullcontext()


class CPUBackend:
    """Runs the engine on NumPy arrays with the Numba CPU kernels.

    A backend supplies array allocation, the few whole-array operations the
    engine needs, a ``plan`` (how to split a step between threads, passed to
    the kernels as ``plan``), the width of its kernels' rows of gates, and
    the two layer kernels, which take the same arguments on every backend.
    """

    name = "cpu"
    empty = staticmethod(empty_aligned)
    allocator = staticmethod(empty_allocator)
    zeros = staticmethod(zeros_aligned)
    layer_forward = staticmethod(lstm_layer_forward)
    layer_backward = staticmethod(lstm_layer_backward)
    # The forward kernel takes three more arguments: weights packed before the call, where they do
    # not change (``Workspace(prepacks=True)``: packed once per layout, ``prepack``), else arrays of no
    # elements (``unpacked_weights``), and it packs them itself.
    new_packed_weights = staticmethod(new_packed_weights)
    pack_layer_weights = staticmethod(pack_layer_weights)

    @staticmethod
    def unpacked_weights(dtype):
        """The forward kernel's packed weights for it to pack itself: three arrays of no elements."""
        return tuple(_empty_placeholder(CPUBackend, shape, dtype) for shape in ((0, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0)))

    @staticmethod
    def plan(seq_len, batch, hidden, state, training, zero_start=False, input_size=0, prepacked=False, far=None):
        """(threads, together, by_batch, pack_weights): how the kernels split and lay out the work (see
        ``lstm_layer_forward``).

        Threads split the batch when each gets whole register tiles of rows, the recurrent
        weights fit in its cache (in inference, up to INFERENCE_BATCH_SPLIT_MAX_BYTES from the L3)
        and, in inference, the call has enough rows to repay every thread
        loading all of them: they then never wait for each other (measured on 2 cores:
        1.2-1.5x faster at batch 8-64 with hidden 128-256; slower when each thread must stream
        weights of 9 MiB or more, as at hidden 768-1024); also where the steps are too
        small to split but the whole call is not (``SMALL_STEPS_BATCH_SPLIT_MIN_WORK`` in inference,
        ``TRAINING_BATCH_SPLIT_MIN_WORK`` in training).
        Otherwise they split every step's hidden units, and may run many steps in one parallel
        region ("together"), which needs every part of a parallel loop on its own thread at the
        same time, as Numba's OpenMP layer provides (the kernels check, and fall back, anyway):
        from less work a step in long calls where the threads run near each other
        (``NEAR_PARALLEL_MIN_WORK``), and only for ``FAR_UNITS_SPLIT_MIN_STATE`` units of state where
        they run far apart (``placement.far_apart``, which ``plan_settings`` adds to the settings;
        ``far``: that answer given, for the plan of a state the machine need not be in).
        ``pack_weights``: whether the kernels repack the weights (``packed.packs_weights``).
        ``zero_start``: the call starts from zero states (the caller gave none); a one-step inference
        call then never reads the recurrent weights (``adds_recurrent_product``): it runs on one
        thread up to ``ONE_STEP_SPLIT_MIN_WORK`` (``input_size``: the largest layer input; packing w_ih
        for a few inputs, ``ONE_STEP_PACKED_MAX_INPUT``), else
        threads that split the batch only project their rows' inputs (measured on 2 cores, one
        process, 8 rounds alternated, input 32: 1.12-1.36x the units split from L1 N4 H256 to L1
        N64 H512, L1 N8 H1024).
        ``prepacked``: inference on weights packed before the call (``Workspace(prepacks=True)``), which
        then costs no packing: it packs, as a long call does, except where a call of a few rows would
        pad the gates (``PREPACKED_PLAIN_MAX_ROWS``).
        """
        reads_weights = reads_recurrent_weights(seq_len, training, zero_start)
        weights = NUM_GATES * hidden * state if reads_weights else 0
        pack_weights = packs_weights(seq_len, batch, weights, training)
        if prepacked and not training:  # packing paid for before the call
            pack_weights = pack_weights or (seq_len * batch > PREPACKED_PLAIN_MAX_ROWS
                                            or hidden % vector_lanes(np.float32) == 0)
        if not reads_weights:  # one step from zero states: only w_ih to pack
            pack_weights = pack_weights or (batch > PLAIN_INPUT_MAX_ROWS and input_size <= ONE_STEP_PACKED_MAX_INPUT)
        together = runs_together()
        far = (together and step_work(batch, hidden, state) >= NEAR_PARALLEL_MIN_WORK
               and (placement.far_apart() if far is None else far))
        n_parts = thread_parts(seq_len, batch, hidden, state, near=together and not far)
        if not reads_weights and batch * NUM_GATES * hidden * input_size < ONE_STEP_SPLIT_MIN_WORK:
            n_parts = 1
        if n_parts > 1:
            weights_fit = weights * 4 <= (CACHE_BYTES_PER_THREAD if training else INFERENCE_BATCH_SPLIT_MAX_BYTES)
            # A short inference call reads the weights too few times to repay every thread loading all
            # of them, where the units can be split in one region instead; from two steps, threads with
            # BATCH_SPLIT_ROWS_PER_THREAD rows each repay it anyway.
            enough_rows = (training or not together or seq_len * batch >= (weights / BATCH_SPLIT_WEIGHTS_SCALE) ** 2
                           or (seq_len >= 2 and batch >= BATCH_SPLIT_ROWS_PER_THREAD * n_parts))
            by_batch = batch >= BATCH_PART_MIN_ROWS * n_parts and weights_fit and enough_rows
            if by_batch or not (far and state < FAR_UNITS_SPLIT_MIN_STATE):
                # Each thread that splits the batch in inference packs its own copy, which beat BLAS's
                # products on its rows from the first step (hidden 128, batch 8, one step: 29 against 48 us).
                return n_parts, together, by_batch, pack_weights or (by_batch and not training)
        # Steps too small to split (or, threads far apart, to split by units); a large enough call splits its batch
        call_work = seq_len * batch * NUM_GATES * hidden * (input_size + (state if reads_weights else 0))
        parts = batch_parts(batch)
        min_work = TRAINING_BATCH_SPLIT_MIN_WORK if training else SMALL_STEPS_BATCH_SPLIT_MIN_WORK
        if parts > 1 and call_work >= min_work and (training or input_size <= SMALL_STEPS_BATCH_SPLIT_MAX_INPUT):
            return parts, together, True, True
        return 1, False, False, pack_weights

    @staticmethod
    def plans(seq_len, batch, hidden, state, training, zero_start=False, input_size=0, prepacked=False):
        """Every plan the kernels can run this call with, ``plan``'s choice first, for ``nblstm.tune`` to
        time: on one thread or all of them (no more than ``unit_parts``, or than the batch has
        BATCH_PART_MIN_ROWS rows), splitting each step's hidden units or the batch
        (which in inference always packs: ``plan``), on packed weights or not."""
        chosen = CPUBackend.plan(seq_len, batch, hidden, state, training, zero_start, input_size, prepacked)
        together = runs_together()
        units, rows = unit_parts(hidden), batch_parts(batch)
        plans = [chosen]
        for pack_weights in (False, True):
            plans.append((1, False, False, pack_weights))
            if units > 1:
                plans.append((units, together, False, pack_weights))
            if rows > 1 and (pack_weights or training):
                plans.append((rows, together, True, pack_weights))
        return tuple(dict.fromkeys(plans))

    @staticmethod
    def plan_settings(batch, hidden, state):
        """The thread settings that ``plan`` reads for this size, which the caller may change between
        calls (``numba.set_num_threads``, ``set_parallel_chunksize``), and where a step's units may be
        split, whether the threads now run far apart (``placement.far_apart``, which the machine
        changes): none when neither a step nor the batch can be split."""
        work = step_work(batch, hidden, state)
        if work < NEAR_PARALLEL_MIN_WORK and batch < 2 * BATCH_PART_MIN_ROWS:  # NEAR_: the least that splits
            return ()
        settings = thread_settings()
        if work < NEAR_PARALLEL_MIN_WORK or settings[0] < 2:
            return settings
        return (*settings, placement.far_apart())

    @staticmethod
    def inference_block_rows(gate_columns, dtype):
        """(time, batch) rows of a block of inference steps: ``INFERENCE_BLOCK_ROWS``, a few cache-sized blocks."""
        return INFERENCE_BLOCK_ROWS

    @staticmethod
    def gate_columns(hidden, dtype, plan):
        """Width of a row of gates: the kernels pad them (``kernels.packed``), to whole panels only
        where threads split the hidden units (threads that split the batch each run all of them)."""
        n_parts, _, by_batch, pack_weights = plan
        return gate_columns(hidden, dtype, n_parts > 1 and not by_batch, pack_weights)

    @staticmethod
    def forward_calls_blas(plan, weights, rows):
        """Whether some layer's forward kernel calls BLAS with this plan (``calls_blas``); ``weights``:
        the (w_ih, w_hh, b_ih, b_hh, w_hr) of each layer and direction (``_layer_weights``); ``rows``:
        seq_len * batch."""
        return any(calls_blas(plan, w_ih.shape[1], w_hr.shape[0] > 0, rows) for w_ih, _, _, _, w_hr in weights)

    @staticmethod
    def guard(plan, blas_inside=True, product_work=0):
        """The kernels own the threads: keep BLAS single-threaded inside kernels that call it
        (``blas_inside``) where they split the work between threads, or where the call's largest
        product (``product_work`` multiply-adds, ``largest_product``) is large enough for BLAS to
        run on its own threads (``BLAS_THREADS_MIN_WORK``).  Setting it and back costs about 1.2 us."""
        threads_inside = plan[0] > 1 or product_work >= BLAS_THREADS_MIN_WORK
        return single_threaded_blas() if blas_inside and threads_inside else _NO_GUARD

    @staticmethod
    def add(a, b):
        return a + b

    @staticmethod
    def multiply(a, b):
        return a * b

    @staticmethod
    def multiply_into(total, factor):
        total *= factor

    @staticmethod
    def dropout_mask(shape, p, dtype, rng):
        """Inverted-dropout scale: 0 with probability p, else 1 / (1 - p)."""
        if p >= 1.0:
            return np.zeros(shape, dtype)
        return ((rng.random(shape) >= p) / (1.0 - p)).astype(dtype)


CPU = CPUBackend()


@dataclass
class Tape:
    """What a training-mode forward keeps for ``backward``.

    layer_inputs[k]: (seq_len, batch, features) input of layer k (after dropout);
    layer_outputs[k]: (seq_len, batch, D*state) output of layer k (before dropout);
    saved[(k, d)]: (gates, c_seq, h_cell_seq) of layer k, direction d;
    dropout_masks[k - 1]: the inverted-dropout scale applied to the input of layer k;
    prepared: the forward's ``Prepared`` (its plan, weights and allocators serve backward too).
    """

    h0: object
    c0: object
    prepared: object
    backend: object
    layer_inputs: list = field(default_factory=list)
    layer_outputs: list = field(default_factory=list)
    saved: dict = field(default_factory=dict)
    dropout_masks: list = field(default_factory=list)

    @property
    def nbytes(self):
        """Bytes of the arrays the tape keeps (the first layer's input is the caller's, kept alive too)."""
        kept = sum(array.nbytes for array in (*self.layer_inputs, *self.layer_outputs, *self.dropout_masks))
        return kept + sum(array.nbytes for saved in self.saved.values() for array in saved)


@dataclass(frozen=True)
class Layout:
    """The shapes of a forward's work arrays and output, fixed by the model, the input's shape and
    the plan (``layout`` computes it)."""

    gates: tuple  # (gate_slots, batch, gate columns): time t in slot t % gate_slots
    c_seq: tuple  # (c_slots, batch, hidden)
    h_cell_seq: tuple  # (c_slots with a projection, else 0, batch, hidden)
    out: tuple  # (seq_len, batch, D*state), each layer's output


def layout(backend, config, seq_len, batch, dtype, plan, training):
    """The ``Layout`` of a forward over (seq_len, batch, features) input: training keeps every step's
    gates and cell states for backward, inference a block of steps' gates and two cell states."""
    hidden = config.hidden_size
    gate_columns = backend.gate_columns(hidden, dtype, plan)
    gate_slots = seq_len if training else min(seq_len, max(1, backend.inference_block_rows(gate_columns, dtype) // batch))
    # Inference keeps two cell states, c_{t-1} and c_t, in alternating slots: never
    # one slot read and written in place, which would stop LLVM vectorising the step.
    c_slots = seq_len if training else min(seq_len, 2)
    return Layout(gates=(gate_slots, batch, gate_columns),
                  c_seq=(c_slots, batch, hidden),
                  h_cell_seq=(c_slots if config.proj_size > 0 else 0, batch, hidden),
                  out=(seq_len, batch, config.num_directions * config.state_size))


@dataclass(frozen=True)
class Prepared:
    """What a forward over one input shape needs besides its arrays (``Workspace.prepare`` makes
    it once per shape): the plan, the ``Layout``, the weights of each layer and direction
    k = layer * D + direction as the kernels take them (``_layer_weights``) from ``params``, and
    whether the forward kernels call BLAS (``forward_calls_blas``) and the multiply-adds of the call's
    largest product (``largest_product``), the zero (h0, c0) of calls given no state (only read),
    the ``allocator`` of each new array a call returns (h_n, c_n and a layer's output), and for each
    layer the (k, direction, weights[k], out_col, packed) of each direction's kernel call, forward and
    backward (``runs``: worked out at every call, they took 0.4 us of a 6.7 us L10 N1 H20 forward);
    packed: the forward kernel's last arguments, weights packed before (``prepack``) or the backend's
    ``unpacked_weights``."""

    plan: tuple
    shapes: Layout
    params: dict
    weights: tuple
    runs: tuple
    blas_inside: bool
    product_work: int
    zero_state: tuple
    new_h_n: object
    new_c_n: object
    new_out: object


def plan_arguments(config, seq_len, batch, training, zero_start, prepacks):
    """The arguments of a backend's ``plan`` (and ``plans``) for a forward over (seq_len, batch, features)
    input (from zero states: ``zero_start``; on weights packed before the call: ``prepacks``)."""
    return (seq_len, batch, config.hidden_size, config.state_size, training, zero_start, widest_layer_input(config),
            prepacks)


def prepare(backend, config, params, seq_len, batch, dtype, training, zero_start, zero_state, packed_kept=None,
            plan=None):
    """The ``Prepared`` forward of (seq_len, batch, features) input (from zero states: ``zero_start``);
    ``zero_state``: zero (h0, c0) arrays of ``config.state_shapes(batch)``.  With ``packed_kept`` (a
    dict; inference on the CPU only), its kernels run on weights packed once (``prepack``).  ``plan``:
    one of the backend's ``plans`` for this call (``nblstm.tune``'s), or None for its ``plan``."""
    prepacks = packed_kept is not None and not training
    plan = plan or backend.plan(*plan_arguments(config, seq_len, batch, training, zero_start, prepacks))
    weights = tuple(_layer_weights(backend, params, config, layer, direction)
                    for layer in range(config.num_layers) for direction in range(config.num_directions))
    shapes = layout(backend, config, seq_len, batch, dtype, plan, training)
    if prepacks:
        packed = prepack(backend, weights, seq_len, batch, reads_recurrent_weights(seq_len, training, zero_start),
                         plan, shapes.gates[2], packed_kept)
    else:
        packed = (backend.unpacked_weights(dtype),) * len(weights)
    num_dirs = config.num_directions
    runs = tuple(tuple((k, direction, weights[k], direction * config.state_size, packed[k])
                       for direction, k in enumerate(range(layer * num_dirs, (layer + 1) * num_dirs)))
                 for layer in range(config.num_layers))
    h_shape, c_shape = config.state_shapes(batch)
    return Prepared(plan, shapes, params, weights, runs, backend.forward_calls_blas(plan, weights, seq_len * batch),
                    largest_product(config, seq_len, batch), zero_state, backend.allocator(h_shape, dtype),
                    backend.allocator(c_shape, dtype), backend.allocator(shapes.out, dtype))


def prepack(backend, weights, seq_len, batch, reads_hh, plan, gate_columns, kept):
    """For each layer and direction's ``weights`` (``_layer_weights``), the packed weights its
    kernel takes with this plan, for (seq_len, batch) inputs (``new_packed_weights``), packed once
    for every input shape that has their layout (their shapes; ``kept``: {shapes: arrays} from
    earlier calls).  The weights must not change while the packed ones are used."""
    layouts = tuple(backend.new_packed_weights(seq_len, batch, w_ih.shape[1], w_hh.shape[1], reads_hh, plan,
                                               gate_columns, w_hh) for w_ih, w_hh, _, _, _ in weights)
    key = tuple(tuple(array.shape for array in arrays) for arrays in layouts)
    packed = kept.get(key)
    if packed is None:
        for (w_ih, w_hh, _, _, _), arrays in zip(weights, layouts):
            backend.pack_layer_weights(w_ih, w_hh, *arrays)
        packed = Workspace.keep(kept, key, layouts)
    return packed


class Workspace:
    """What one model keeps between its calls: the ``Prepared`` forwards of recent input shapes, the
    inference work arrays (gates, cell states, projection inputs) and zero initial states; with
    ``prepacks`` (a model whose weights never change, ``nblstm.freeze``: CPU inference only), its
    weights packed for the kernels once per layout (``prepack``) instead of at every call.

    Fresh arrays of a MiB or more are new memory that the OS maps in page by page at
    first touch: at L100 N8 H128 that was 30% of a call (1.3 ms against 0.9 ms with
    reused arrays).  ``forward`` takes the arrays, and gives them back when done, so
    repeated calls of the same shape allocate nothing; a call of another shape (or on
    another backend) allocates its own, which then replace them.  A call made while
    another thread holds them finds none and allocates too, so one model may serve
    several threads.  Small models are called often: the rest saves them microseconds.
    """

    # Prepared forwards of the latest input shapes, and the arrays (zero states, packed weights) of the latest few.
    # Preparing a call of a new shape costs 15-17 us (L30 N1 H20 and N4 H128): a caller cycling through 20
    # sequence lengths paid it at every call with room for 8 (L20-L39 N1 H20 33.1-33.8 us a call, L30 alone
    # 15.7-16.2; 18.1-18.4 with room for 64 or more).  A Prepared holds no arrays of its own but the zero
    # states of its batch size (``zeros`` drops it with them) and the packed weights of its layout (a few
    # layouts serve every shape).
    KEPT_PREPARED = 256
    KEPT = 8

    def __init__(self, prepacks=False):
        self._free = []
        self._prepared = {}
        self._zeros = {}
        self._packed = {} if prepacks else None
        self.plans = {}  # {prepare's key: the plan ``nblstm.tune`` chose}, for good
        self.trial = None  # a ``Trial`` while ``nblstm.tune`` times plans

    @staticmethod
    def keep(cache, key, value, most=None):
        """``value``, kept in ``cache`` under ``key``; a full cache (``most`` other values, KEPT by default) first
        drops the one kept longest."""
        if key not in cache and len(cache) >= (Workspace.KEPT if most is None else most):
            try:
                del cache[next(iter(cache))]
            except (KeyError, RuntimeError, StopIteration):  # another thread changed the cache meanwhile
                pass
        cache[key] = value
        return value

    def prepare(self, backend, config, params, seq_len, batch, dtype, training, zero_start=False):
        """``prepare(...)``, made once per shape, thread settings (``plan_settings``) and whether it reads
        the recurrent weights (calls with and without a state share one, and so their work arrays,
        unless that differs) while the parameters are the same arrays: the same dict, or one holding
        the same first weight (a model replaces all its arrays at once, as ``Module.to``, which takes
        a new workspace too).  Its plan: the one ``nblstm.tune`` chose for the key (``plans``), the
        ``trial``'s while it times them, else the backend's ``plan``."""
        key = (backend.name, seq_len, batch, dtype, training, reads_recurrent_weights(seq_len, training, zero_start),
               backend.plan_settings(batch, config.hidden_size, config.state_size))
        if self.trial is None:
            plan = self.plans.get(key)
        else:
            prepacks = self._packed is not None and not training
            plan = self.trial.plan(key, plan_arguments(config, seq_len, batch, training, zero_start, prepacks),
                                   backend.plans)
        prepared = self._prepared.get(key)
        if (prepared is None or (plan is not None and prepared.plan != plan)
                or (prepared.params is not params
                    and prepared.weights[0][0] is not params[config.names(0, 0).weight_ih])):
            zero_state = self.zeros(backend, config.state_shapes(batch), dtype)
            prepared = self.keep(self._prepared, key, prepare(backend, config, params, seq_len, batch, dtype,
                                                              training, zero_start, zero_state, self._packed, plan),
                                 self.KEPT_PREPARED)
        return prepared

    def take(self, backend, shapes, dtype):
        """The inference work arrays of ``shapes`` (a ``Prepared``'s ``Layout``): the kept ones if
        they match, else new ones; give them back with ``give_back(shapes, arrays)``."""
        try:
            kept, arrays = self._free.pop()  # list.pop is atomic: two threads never get the same arrays
        except IndexError:
            kept = None
        if kept is not shapes:  # the same Layout object: the same shapes, dtype and backend
            arrays = tuple(backend.empty(shape, dtype) for shape in (shapes.gates, shapes.c_seq, shapes.h_cell_seq))
        return arrays

    def give_back(self, shapes, arrays):
        """Keep ``arrays`` (from ``take``) for the next call."""
        if not self._free:
            self._free.append((shapes, arrays))

    def zeros(self, backend, shapes, dtype):
        """Zero arrays of ``shapes`` (a tuple of shapes) on ``backend``, the same arrays at every call:
        the caller must only read them (the kernels only read initial states)."""
        key = (backend.name, shapes, dtype)
        zeros = self._zeros.get(key)
        if zeros is None:
            zeros = self.keep(self._zeros, key, tuple(backend.zeros(shape, dtype) for shape in shapes))
            # Prepared forwards hold their zero states: those of zero states no longer kept go too, not to keep
            # them alive (a model called with many batch sizes keeps those of KEPT of them).
            kept = [id(arrays) for arrays in self._zeros.values()]
            for prepared_key, prepared in list(self._prepared.items()):
                if id(prepared.zero_state) not in kept:
                    self._prepared.pop(prepared_key, None)
        return zeros


class Trial:
    """Which of a call's plans (a backend's ``plans``) the calls of a model run while ``nblstm.tune`` times
    them: the one at ``index``.  ``Workspace.prepare`` gives it each call's key and the arguments of the
    backend's ``plans``, which it calls once for each kind of call (6.6 us at L10 N1 H128, a fifth of
    that call, which every timed call would otherwise pay), keeping ``key`` and ``plans`` for the tuner
    to choose from."""

    def __init__(self):
        self.index = 0
        self.key = self.plans = None
        self._asked = None  # (key, arguments) of the kept plans

    def plan(self, key, arguments, plans_for):
        """The plan at ``index`` of ``plans_for(*arguments)`` (a backend's ``plans``) for a call of ``key``."""
        if (key, arguments) != self._asked:
            self._asked = (key, arguments)
            self.key, self.plans = key, plans_for(*arguments)
        return self.plans[self.index]


@functools.cache
def _empty_placeholder(backend, shape, dtype):
    """An array of no elements standing in for absent weights (no bias, no projection): having
    none to change, one of each shape serves every call."""
    return backend.empty(shape, dtype)


def _layer_weights(backend, params, config, layer, direction):
    """(w_ih, w_hh, b_ih, b_hh, w_hr) of one layer and direction as the kernels take them: (0,) biases
    without bias, a (0, 0) w_hr without projection.  ``params`` may be the gradients too (same names)."""
    names = config.names(layer, direction)
    w_ih = params[names.weight_ih]
    if config.bias:
        b_ih, b_hh = params[names.bias_ih], params[names.bias_hh]
    else:
        b_ih = b_hh = _empty_placeholder(backend, (0,), w_ih.dtype)
    w_hr = params[names.weight_hr] if names.weight_hr else _empty_placeholder(backend, (0, 0), w_ih.dtype)
    return w_ih, params[names.weight_hh], b_ih, b_hh, w_hr


def forward(params, config, x, h0=None, c0=None, training=False, dropout_rng=None, backend=CPU, workspace=None):
    """Forward pass of the whole LSTM.

    x: (seq_len, batch, input_size); h0: (L*D, batch, state); c0: (L*D, batch, hidden); both None
    for zeros (the call then starts from zero states: ``CPUBackend.plan``'s zero_start).
    workspace: the model's ``Workspace`` (prepared forwards, work arrays and zero states kept between
    calls; optional).  Returns output (seq_len, batch, D*state), h_n, c_n and, in training mode, a Tape.
    """
    seq_len, batch, _ = x.shape
    dtype = x.dtype
    workspace = workspace or Workspace()
    zero_start = h0 is None
    prepared = workspace.prepare(backend, config, params, seq_len, batch, dtype, training, zero_start)
    if zero_start:
        h0, c0 = prepared.zero_state
    plan, shapes = prepared.plan, prepared.shapes
    h_n, c_n = prepared.new_h_n(), prepared.new_c_n()
    tape = Tape(h0, c0, prepared, backend) if training else None
    if not training:  # one work space serves every layer and direction
        gates, c_seq, h_cell_seq = work = workspace.take(backend, shapes, dtype)
    layer_input = x
    with backend.guard(plan, prepared.blas_inside, prepared.product_work):
        for layer, runs in enumerate(prepared.runs):
            if layer > 0 and training and config.dropout > 0:
                mask = backend.dropout_mask(layer_input.shape, config.dropout, dtype, dropout_rng)
                tape.dropout_masks.append(mask)
                layer_input = backend.multiply(layer_input, mask)
            out = prepared.new_out()
            for k, direction, weights, out_col, packed in runs:
                if training:
                    gates, c_seq, h_cell_seq = tape.saved[(layer, direction)] = (
                        backend.empty(shapes.gates, dtype), backend.empty(shapes.c_seq, dtype),
                        backend.empty(shapes.h_cell_seq, dtype))
                backend.layer_forward(layer_input, *weights, h0, c0, k, direction == 1, plan, gates, c_seq,
                                      h_cell_seq, out, out_col, h_n, c_n, *packed)
            if training:
                tape.layer_inputs.append(layer_input)
                tape.layer_outputs.append(out)
            layer_input = out
    if not training:
        workspace.give_back(shapes, work)
    return layer_input, h_n, c_n, tape


def backward(config, tape, grad_output, grad_h_n, grad_c_n, grads, grads_beta):
    """Backpropagation through time for a training-mode ``forward``, with the weights it ran on.

    grad_output: (seq_len, batch, D*state); grad_h_n, grad_c_n: like h_n, c_n.
    Sets each array of ``grads`` ({name: array}) to its parameter's gradient + grads_beta * itself
    (1 accumulates, 0 overwrites what zero_grad left to be zeros) and returns grad_x
    (seq_len, batch, input_size), grad_h0, grad_c0.
    """
    hidden, state = config.hidden_size, config.state_size
    seq_len, batch, _ = grad_output.shape
    dtype = grad_output.dtype
    backend, prepared = tape.backend, tape.prepared
    plan = prepared.plan
    grad_h0, grad_c0 = prepared.new_h_n(), prepared.new_c_n()
    dh, dc = backend.empty((batch, state), dtype), backend.empty((batch, hidden), dtype)
    dh_cell = backend.empty((batch, hidden), dtype)
    dh_seq = backend.empty((seq_len if config.proj_size > 0 else 0, batch, state), dtype)
    d_out = grad_output
    with backend.guard(plan, True, prepared.product_work):
        for layer in reversed(range(config.num_layers)):
            layer_input, out = tape.layer_inputs[layer], tape.layer_outputs[layer]
            dx = backend.empty(layer_input.shape, dtype)
            for k, direction, (w_ih, w_hh, _, _, w_hr), out_col, _ in prepared.runs[layer]:
                # grads has the parameters' names: the same placeholders stand in for absent ones
                dw_ih, dw_hh, db_ih, db_hh, dw_hr = _layer_weights(backend, grads, config, layer, direction)
                gates, c_seq, h_cell_seq = tape.saved.pop((layer, direction))
                backend.layer_backward(
                    layer_input, w_ih, w_hh, w_hr, tape.h0[k], tape.c0[k], out, out_col,
                    gates, c_seq, h_cell_seq, direction == 1, plan,
                    d_out, grad_h_n[k], grad_c_n[k], dh, dc, dh_cell, dh_seq,
                    dx, 0.0 if direction == 0 else 1.0, grad_h0[k], grad_c0[k],
                    dw_ih, dw_hh, db_ih, db_hh, dw_hr, grads_beta)
            if layer > 0 and tape.dropout_masks:
                backend.multiply_into(dx, tape.dropout_masks[layer - 1])
            d_out = dx
    return d_out, grad_h0, grad_c0
