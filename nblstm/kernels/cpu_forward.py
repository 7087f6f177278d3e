"""Forward pass of one LSTM layer in one direction, compiled with Numba.

Per layer and direction:

1. the input projection ``x_t @ w_ih.T`` for a block of time steps as one
   matrix product (the whole sequence in training; a fixed-size block in
   inference so memory does not grow with seq_len);
2. a compiled loop over time in which each thread owns a slice of the hidden
   units: it adds ``h_{t-1} @ w_hh.T`` for the rows of its slice of every gate,
   then applies the fused gate math
   ``c_t = f * c_{t-1} + i * g``, ``h_t = o * tanh(c_t)``
   (with a projection, ``h_t = w_hr @ (o * tanh(c_t))`` in a second parallel
   region).  Threads never write the same element, so there are no races.

All arrays are preallocated by the caller and indexed by time step, so the
reverse direction runs the same loop backwards in time.
"""
from numba import njit, prange

from .._config import JIT_OPTIONS, PARALLEL_JIT_OPTIONS
from ..params import NUM_GATES
from .activations import sigmoid, tanh
from .blas import gemm
from .parallel import matmul, part_range

@njit(**JIT_OPTIONS)
def time_index(step, seq_len, reverse):
    """Time index visited at loop step ``step`` (the reverse direction walks backwards)."""
    return seq_len - 1 - step if reverse else step


@njit(**JIT_OPTIONS)
def gate_slices(row, hidden, start, stop):
    """The i, f, g, o entries of hidden units [start, stop) in a (4*hidden,) row of gates.

    Kernels loop over these zero-based slices rather than over range(start, stop):
    with a non-negative loop index Numba emits no negative-index wraparound, which
    lets LLVM vectorise the gate math.
    """
    return (row[start:stop], row[hidden + start:hidden + stop],
            row[2 * hidden + start:2 * hidden + stop], row[3 * hidden + start:3 * hidden + stop])


@njit(**JIT_OPTIONS)
def cell_forward_part(gates_t, bias, h_prev, w_hh, c_prev, c_t, h_dst, h_dst_col, start, stop):
    """One time step for hidden units [start, stop).

    gates_t:   (batch, 4*hidden) input projection of this step (without bias);
               on return it holds the gate activations i, f, g, o of the slice
    bias:      (4*hidden,) b_ih + b_hh
    h_prev:    (batch, state) previous hidden state
    w_hh:      (4*hidden, state)
    c_prev:    (batch, hidden) previous cell state
    c_t:       (batch, hidden) receives the new cell state (not c_prev: vectorisation needs them apart)
    h_dst:     (batch, >= h_dst_col + hidden) receives o * tanh(c_t) in columns h_dst_col + j
    """
    hidden = c_t.shape[1]
    if stop - start == hidden:  # all hidden units: the four gates' rows form one block
        gemm(h_prev, w_hh, gates_t, False, True, 1.0)
    else:
        for gate in range(NUM_GATES):
            rows = gate * hidden
            gemm(h_prev, w_hh[rows + start:rows + stop], gates_t[:, rows + start:rows + stop], False, True, 1.0)
    i_bias, f_bias, g_bias, o_bias = gate_slices(bias, hidden, start, stop)
    for b in range(gates_t.shape[0]):
        i_row, f_row, g_row, o_row = gate_slices(gates_t[b], hidden, start, stop)
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


@njit(**PARALLEL_JIT_OPTIONS)
def cell_forward_parallel(gates_t, bias, h_prev, w_hh, c_prev, c_t, h_dst, h_dst_col, n_parts):
    """cell_forward_part over all hidden units, split between ``n_parts`` threads."""
    for part in prange(n_parts):
        start, stop = part_range(part, n_parts, c_t.shape[1])
        cell_forward_part(gates_t, bias, h_prev, w_hh, c_prev, c_t, h_dst, h_dst_col, start, stop)


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
    gates:      (gate_slots, batch, 4*hidden) work space; time t uses slot t % gate_slots.
                With gate_slots == seq_len it keeps every step's activations for backward.
    c_seq:      (c_slots, batch, hidden) cell states, slot t % c_slots (c_slots: seq_len, or 2
                to keep only c_{t-1} and c_t)
    h_cell_seq: (c_slots, batch, hidden) o * tanh(c) before the projection; unused (may be
                (0, 0, 0)) without projection
    out:        (seq_len, batch, >= out_col + state) receives h_t in columns out_col:out_col + state
    h_n, c_n:   (batch, state), (batch, hidden) receive the final states
    """
    seq_len, batch = x.shape[0], x.shape[1]
    hidden = c0.shape[1]
    state = h0.shape[1]
    gate_slots = gates.shape[0]
    c_slots = c_seq.shape[0]
    projecting = w_hr.shape[0] > 0
    projected_block = -1
    for step in range(seq_len):
        t = time_index(step, seq_len, reverse)
        block = t // gate_slots
        if block != projected_block:
            projected_block = block
            t0 = block * gate_slots
            t1 = min(seq_len, t0 + gate_slots)
            x_block = x[t0:t1].reshape(((t1 - t0) * batch, x.shape[2]))
            gates_block = gates[:t1 - t0].reshape(((t1 - t0) * batch, gates.shape[2]))
            matmul(x_block, w_ih, gates_block, False, True, 0.0, False, n_parts)
        if step == 0:
            h_prev = h0
            c_prev = c0
        else:
            t_prev = time_index(step - 1, seq_len, reverse)
            h_prev = out[t_prev][:, out_col:out_col + state]
            c_prev = c_seq[t_prev % c_slots]
        c_t = c_seq[t % c_slots]
        if projecting:
            h_dst, h_dst_col = h_cell_seq[t % c_slots], 0
        else:
            h_dst, h_dst_col = out[t], out_col
        gates_t = gates[t % gate_slots]
        if n_parts > 1:
            cell_forward_parallel(gates_t, bias, h_prev, w_hh, c_prev, c_t, h_dst, h_dst_col, n_parts)
        else:
            cell_forward_part(gates_t, bias, h_prev, w_hh, c_prev, c_t, h_dst, h_dst_col, 0, hidden)
        if projecting:
            matmul(h_dst, w_hr, out[t][:, out_col:out_col + state], False, True, 0.0, True, n_parts)
    t_last = time_index(seq_len - 1, seq_len, reverse)
    h_n[:, :] = out[t_last][:, out_col:out_col + state]
    c_n[:, :] = c_seq[t_last % c_slots]
