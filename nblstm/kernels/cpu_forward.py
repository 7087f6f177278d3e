"""Forward pass of one LSTM layer in one direction, compiled with Numba.

Gates are kept in the padded gate layout of ``packed.py`` (PyTorch's i, f, g,
o blocks, each padded to whole panels).  Per layer and direction:

1. the weights are repacked once (``pack_gate_rows``) so that the products
   below stream them contiguously from cache;
2. the input projection ``x_t @ w_ih.T`` of a block of time steps is one
   matrix product (the whole sequence in training; a fixed-size block in
   inference, so memory does not grow with seq_len);
3. a compiled loop over time in which each thread owns a range of hidden
   units (whole panels): it adds ``h_{t-1} @ w_hh.T`` to the four gate blocks
   of its units, then applies the fused gate math
   ``c_t = f * c_{t-1} + i * g``, ``h_t = o * tanh(c_t)``
   (with a projection, ``h_t = w_hr @ (o * tanh(c_t))`` in a second parallel
   region).  Threads never write the same element, so there are no races.

Sequences shorter than ``PACK_MIN_STEPS`` (single steps of LSTMCell) skip the
repacking, which would cost more than it saves, and compute each step's gates
in PyTorch's layout before copying them into the padded layout.

All arrays are preallocated by the caller and indexed by time step, so the
reverse direction runs the same loop backwards in time.
"""
import numpy as np
from numba import njit, prange

from .._config import JIT_OPTIONS, PARALLEL_JIT_OPTIONS
from ..params import NUM_GATES
from .activations import sigmoid, tanh
from .blas import gemm
from .packed import PANEL_VECTORS, gemm_packed, pack_gate_rows, to_padded_rows
from .parallel import matmul, part_range
from .simd import lanes_of

# Repacking the weights pays for itself from this many time steps on.
PACK_MIN_STEPS = 4


@njit(**JIT_OPTIONS)
def time_index(step, seq_len, reverse):
    """Time index visited at loop step ``step`` (the reverse direction walks backwards)."""
    return seq_len - 1 - step if reverse else step


@njit(**JIT_OPTIONS)
def gate_slices(row, padded, start, stop):
    """The i, f, g, o entries of hidden units [start, stop) in a (4*padded,) row of gates.

    Kernels loop over these zero-based slices rather than over range(start, stop):
    with a non-negative loop index Numba emits no negative-index wraparound, which
    lets LLVM vectorise the gate math.
    """
    return (row[start:stop], row[padded + start:padded + stop],
            row[2 * padded + start:2 * padded + stop], row[3 * padded + start:3 * padded + stop])


@njit(**JIT_OPTIONS)
def to_padded(values, padded_row):
    """A (4*hidden,) row in PyTorch's gate layout into a (4*padded,) row in the padded gate layout."""
    to_padded_rows(values.reshape((values.shape[0], 1)), padded_row.reshape((padded_row.shape[0], 1)))


@njit(**JIT_OPTIONS)
def gate_math_part(gates_t, bias, c_prev, c_t, h_dst, h_dst_col, start, stop):
    """The fused gate math of one step for hidden units [start, stop).

    gates_t:  (batch, 4*padded) pre-activations less the bias, padded gate layout;
              on return the activations i, f, g, o of those units
    bias:     (4*padded,) b_ih + b_hh, padded gate layout
    c_prev:   (batch, hidden) previous cell state
    c_t:      (batch, hidden) receives the new cell state (not c_prev: vectorisation needs them apart)
    h_dst:    (batch, >= h_dst_col + hidden) receives o * tanh(c_t) in columns h_dst_col + j
    """
    padded = gates_t.shape[1] // NUM_GATES
    i_bias, f_bias, g_bias, o_bias = gate_slices(bias, padded, start, stop)
    for b in range(gates_t.shape[0]):
        i_row, f_row, g_row, o_row = gate_slices(gates_t[b], padded, start, stop)
        c_prev_row, c_row = c_prev[b, start:stop], c_t[b, start:stop]
        h_row = h_dst[b, h_dst_col + start:h_dst_col + stop]
        for j in range(stop - start):
            i_gate = sigmoid(i_row[j] + i_bias[j])
            f_gate = sigmoid(f_row[j] + f_bias[j])
            g_gate = tanh(g_row[j] + g_bias[j])
            o_gate = sigmoid(o_row[j] + o_bias[j])
            c = f_gate * c_prev_row[j] + i_gate * g_gate
            c_row[j] = c
            h_row[j] = o_gate * tanh(c)
            i_row[j], f_row[j], g_row[j], o_row[j] = i_gate, f_gate, g_gate, o_gate


@njit(**JIT_OPTIONS)
def gemm_gate_blocks(a, packed, c, accumulate, start, stop):
    """c[:, gate columns of units [start, stop)] (+)= a @ (packed weights of those columns), for the
    four gate blocks of c (batch, 4*padded); start, stop are multiples of the panel width."""
    width = packed.shape[2]
    blocks = packed.shape[0] // NUM_GATES
    for gate in range(NUM_GATES):
        gemm_packed(a, packed, c, accumulate, gate * blocks + start // width, gate * blocks + stop // width,
                    0, c.shape[0])


@njit(**JIT_OPTIONS)
def cell_forward_part(gates_t, bias, h_prev, packed_hh, c_prev, c_t, h_dst, h_dst_col, start, stop):
    """One time step for hidden units [start, stop) (whole panels): add h_prev @ w_hh.T (packed_hh from
    ``pack_gate_rows``; h_prev (batch, state)) to their gates, then the gate math."""
    gemm_gate_blocks(h_prev, packed_hh, gates_t, True, start, stop)
    gate_math_part(gates_t, bias, c_prev, c_t, h_dst, h_dst_col, start, min(stop, c_t.shape[1]))


@njit(**PARALLEL_JIT_OPTIONS)
def cell_forward_parallel(gates_t, bias, h_prev, packed_hh, c_prev, c_t, h_dst, h_dst_col, n_parts):
    """cell_forward_part over every hidden unit, whole panels of units split between ``n_parts`` threads."""
    width = packed_hh.shape[2]
    for part in prange(n_parts):
        start, stop = part_range(part, n_parts, gates_t.shape[1] // NUM_GATES, width)
        cell_forward_part(gates_t, bias, h_prev, packed_hh, c_prev, c_t, h_dst, h_dst_col, start, stop)


@njit(**PARALLEL_JIT_OPTIONS)
def _gemm_packed_parallel(a, packed, c, accumulate, n_parts):
    for part in prange(n_parts):
        start, stop = part_range(part, n_parts, packed.shape[0], 1)
        gemm_packed(a, packed, c, accumulate, start, stop, 0, a.shape[0])


@njit(**JIT_OPTIONS)
def gemm_packed_all(a, packed, c, accumulate, n_parts):
    """c (+)= a @ (packed weights) over every panel, the panels split between ``n_parts`` threads."""
    if n_parts > 1:
        _gemm_packed_parallel(a, packed, c, accumulate, n_parts)
    else:
        gemm_packed(a, packed, c, accumulate, 0, packed.shape[0], 0, a.shape[0])


@njit(**JIT_OPTIONS)
def _direct_gates(x_t, w_ih, h_prev, w_hh, gates_t, scratch):
    """gates_t = x_t @ w_ih.T + h_prev @ w_hh.T in the padded gate layout, without repacked weights;
    scratch (batch, 4*hidden) holds them in PyTorch's layout on the way."""
    gemm(x_t, w_ih, scratch, False, True, 0.0)
    gemm(h_prev, w_hh, scratch, False, True, 1.0)
    for b in range(gates_t.shape[0]):
        to_padded(scratch[b], gates_t[b])


@njit(**JIT_OPTIONS)
def lstm_layer_forward(x, w_ih, w_hh, bias, w_hr, h0, c0, reverse, n_parts,
                       gates, c_seq, h_cell_seq, out, out_col, h_n, c_n):
    """Run one layer in one direction over the whole sequence.

    x:          (seq_len, batch, input_size) layer input, C-contiguous
    w_ih:       (4*hidden, input_size)
    w_hh:       (4*hidden, state)           state = proj_size or hidden
    bias:       (4*hidden,)                 b_ih + b_hh (zeros without bias)
    w_hr:       (proj_size, hidden), or (0, hidden) without projection
    h0:         (batch, state); c0: (batch, hidden)
    reverse:    walk the sequence from the last time step to the first
    n_parts:    threads to split each step between (1 runs serially)
    gates:      (gate_slots, batch, 4*padded) work space in the padded gate layout
                (``packed.padded_hidden``); time t uses slot t % gate_slots.  With
                gate_slots == seq_len it keeps every step's activations for backward.
    c_seq:      (c_slots, batch, hidden) cell states, slot t % c_slots (c_slots: seq_len, or 2
                to keep only c_{t-1} and c_t)
    h_cell_seq: (c_slots, batch, hidden) o * tanh(c) before the projection; unused (may be
                (0, 0, 0)) without projection
    out:        (seq_len, batch, >= out_col + state) receives h_t in columns out_col:out_col + state
    h_n, c_n:   (batch, state), (batch, hidden) receive the final states
    """
    seq_len, batch = x.shape[0], x.shape[1]
    hidden, state = c0.shape[1], h0.shape[1]
    gate_slots, c_slots = gates.shape[0], c_seq.shape[0]
    width = PANEL_VECTORS * lanes_of(bias)  # columns per panel
    padded = gates.shape[2] // NUM_GATES
    bias_padded = np.empty(gates.shape[2], gates.dtype)
    to_padded(bias, bias_padded)
    n_panels = gates.shape[2] // width
    packing = seq_len >= PACK_MIN_STEPS
    packed_ih = np.empty((n_panels if packing else 0, x.shape[2], width), gates.dtype)
    packed_hh = np.empty((n_panels, state if packing else 0, width), gates.dtype)
    scratch = np.empty((0 if packing else batch, NUM_GATES * hidden), gates.dtype)
    if packing:
        pack_gate_rows(w_ih, packed_ih)
        pack_gate_rows(w_hh, packed_hh)
    projecting = w_hr.shape[0] > 0
    projected_block = -1
    for step in range(seq_len):
        t = time_index(step, seq_len, reverse)
        if step == 0:
            h_prev = h0
            c_prev = c0
        else:
            t_prev = time_index(step - 1, seq_len, reverse)
            h_prev = out[t_prev][:, out_col:out_col + state]
            c_prev = c_seq[t_prev % c_slots]
        gates_t = gates[t % gate_slots]
        if packing and t // gate_slots != projected_block:
            projected_block = t // gate_slots
            t0 = projected_block * gate_slots
            t1 = min(seq_len, t0 + gate_slots)
            gemm_packed_all(x[t0:t1].reshape(((t1 - t0) * batch, x.shape[2])), packed_ih,
                            gates[:t1 - t0].reshape(((t1 - t0) * batch, gates.shape[2])), False, n_parts)
        elif not packing:
            _direct_gates(x[t], w_ih, h_prev, w_hh, gates_t, scratch)
        c_t = c_seq[t % c_slots]
        if projecting:
            h_dst, h_dst_col = h_cell_seq[t % c_slots], 0
        else:
            h_dst, h_dst_col = out[t], out_col
        if n_parts > 1:
            cell_forward_parallel(gates_t, bias_padded, h_prev, packed_hh, c_prev, c_t, h_dst, h_dst_col, n_parts)
        else:
            cell_forward_part(gates_t, bias_padded, h_prev, packed_hh, c_prev, c_t, h_dst, h_dst_col, 0, padded)
        if projecting:
            matmul(h_dst, w_hr, out[t][:, out_col:out_col + state], False, True, 0.0, True, n_parts)
    t_last = time_index(seq_len - 1, seq_len, reverse)
    h_n[:, :] = out[t_last][:, out_col:out_col + state]
    c_n[:, :] = c_seq[t_last % c_slots]
