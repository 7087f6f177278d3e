"""Forward pass of one LSTM layer in one direction on an NVIDIA GPU: the numba.cuda twin of ``cpu_forward``.

Per layer and direction, for each block of time steps (the whole sequence in
training; a fixed-size block in inference, as on the CPU):

1. the input projection ``x_t @ w_ih.T`` of the block as one tiled matrix
   product (``matmul``);
2. the recurrence, one of two ways:

   * per-step launches: each step is one ``cell_forward_parallel`` kernel that
     tiles the recurrent product ``h_{t-1} @ w_hh.T`` through shared memory and
     applies the gate math ``c_t = f * c_{t-1} + i * g``, ``h_t = o * tanh(c_t)``
     in the same threads (with a projection, ``h_t = w_hr @ (o * tanh(c_t))`` is
     one more tiled product);
   * persistent, for small batches: one ``forward_persistent`` launch runs the
     whole block of steps.  Each thread block keeps the rows of w_hh (and w_hr)
     of its slice of hidden units in shared memory for every step, a group of
     threads shares each unit's dot products (as many threads as leave one
     group per (batch row, unit)), and the blocks meet at a grid-wide barrier
     (cooperative groups) after each step.
     It is used when the plan asks for it and the weights fit on chip;
     otherwise the per-step launches run.

Arrays are device arrays, preallocated by the engine with the CPU twin's
shapes and slots (time t uses gate slot t % gate_slots, cell slot t % c_slots).
"""
import math

from numba import cuda

from ..params import NUM_GATES
from .cuda_activations import sigmoid, tanh
from .cuda_common import (
    COPY,
    CUDA_JIT_OPTIONS,
    MAX_TILE,
    PADDED_TILE,
    ZERO,
    blocks_for,
    element_or_zero,
    elementwise,
    group_lanes,
    matmul,
    persistent_grid,
    slice_length,
    sum_groups,
)


def step_time(step, seq_len, reverse):
    """Time index visited at loop step ``step`` (the reverse direction walks backwards)."""
    return seq_len - 1 - step if reverse else step


# The same function for kernels; the host-side loops call the Python one.
time_index = cuda.jit(device=True)(step_time)


@cuda.jit(device=True)
def bias_of(b_ih, b_hh, row):
    """b_ih[row] + b_hh[row], or 0 when the layer has no bias (b_ih, b_hh of shape (0,))."""
    return b_ih[row] + b_hh[row] if b_ih.shape[0] > 0 else ZERO


@cuda.jit(device=True)
def cell_forward_unit(gates_t, b_ih, b_hh, c_prev, c_t, h_dst, h_dst_col, b, j, recurrent):
    """The gate math of hidden unit j in batch row b.

    gates_t:   (batch, 4*hidden) input projection of this step (without bias);
               on return gates_t[b, gate*hidden + j] hold the activations i, f, g, o
    b_ih, b_hh: (4*hidden,) the biases, added here (or (0,) for a layer without)
    recurrent: (4,) the unit's h_prev @ w_hh.T for each gate
    c_prev:    (batch, hidden) previous cell state
    c_t:       (batch, hidden) receives the new cell state at [b, j] (may be c_prev itself)
    h_dst:     (batch, >= h_dst_col + hidden) receives o * tanh(c_t) at [b, h_dst_col + j]
    """
    hidden = c_t.shape[1]
    f_rows, g_rows, o_rows = hidden, 2 * hidden, 3 * hidden
    i_gate = sigmoid(gates_t[b, j] + bias_of(b_ih, b_hh, j) + recurrent[0])
    f_gate = sigmoid(gates_t[b, f_rows + j] + bias_of(b_ih, b_hh, f_rows + j) + recurrent[1])
    g_gate = tanh(gates_t[b, g_rows + j] + bias_of(b_ih, b_hh, g_rows + j) + recurrent[2])
    o_gate = sigmoid(gates_t[b, o_rows + j] + bias_of(b_ih, b_hh, o_rows + j) + recurrent[3])
    c = f_gate * c_prev[b, j] + i_gate * g_gate
    c_t[b, j] = c
    h_dst[b, h_dst_col + j] = o_gate * tanh(c)
    gates_t[b, j] = i_gate
    gates_t[b, f_rows + j] = f_gate
    gates_t[b, g_rows + j] = g_gate
    gates_t[b, o_rows + j] = o_gate


@cuda.jit(device=True)
def step_arrays(step, reverse, h0, c0, c_seq, h_cell_seq, out, out_col):
    """What loop step ``step`` reads and writes, as (t, h_prev, c_prev, c_t, h_dst, h_dst_col).

    t is the time it visits; h_prev and c_prev the state it starts from (h0 and c0 at the first
    step, else the previous step's output columns and cell slot); c_t the cell slot it writes;
    h_dst[:, h_dst_col:] where o * tanh(c_t) goes (the step's h_cell_seq slot with a projection,
    whose rows the projection then takes to out, else the step's output columns).
    Arguments as ``lstm_layer_forward``.
    """
    seq_len, state, c_slots = out.shape[0], h0.shape[1], c_seq.shape[0]
    t = time_index(step, seq_len, reverse)
    t_prev = time_index(step - 1, seq_len, reverse)
    h_prev = h0 if step == 0 else out[t_prev, :, out_col:out_col + state]
    c_prev = c0 if step == 0 else c_seq[t_prev % c_slots]
    h_dst = h_cell_seq[t % c_slots] if h_cell_seq.shape[0] > 0 else out[t]
    h_dst_col = 0 if h_cell_seq.shape[0] > 0 else out_col
    return t, h_prev, c_prev, c_seq[t % c_slots], h_dst, h_dst_col


@cuda.jit(**CUDA_JIT_OPTIONS)
def cell_forward_parallel(gates, b_ih, b_hh, w_hh, h0, c0, reverse, step, c_seq, h_cell_seq, out, out_col):
    """Loop step ``step``: the recurrent product tiled through shared memory, fused with the gate math.

    Arguments as ``lstm_layer_forward``, whole arrays: the kernel takes the step's slots of them
    itself (``step_arrays``), as views built on the host cost it tens of microseconds each.
    The step's input projection must be in ``gates``.
    Launch: blocks of (tile, tile) threads, tile <= MAX_TILE, grid (ceil(hidden / tile),
    ceil(batch / tile)); thread (x, y) of a block computes hidden unit x of batch row y.
    """
    t, h_prev, c_prev, c_t, h_dst, h_dst_col = step_arrays(step, reverse, h0, c0, c_seq, h_cell_seq, out, out_col)
    tile = cuda.blockDim.x
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    unit0, row0 = cuda.blockIdx.x * tile, cuda.blockIdx.y * tile
    hidden, state = c_t.shape[1], h_prev.shape[1]
    h_tile = cuda.shared.array((MAX_TILE, PADDED_TILE), gates.dtype)             # [row, kk]
    w_tile = cuda.shared.array((NUM_GATES, MAX_TILE, PADDED_TILE), gates.dtype)  # [gate, unit, kk]
    recurrent = cuda.local.array(NUM_GATES, gates.dtype)
    for gate in range(NUM_GATES):
        recurrent[gate] = ZERO
    for k0 in range(0, state, tile):
        k = k0 + tx
        h_tile[ty, tx] = element_or_zero(h_prev, row0 + ty, k)
        for gate in range(NUM_GATES):
            w_tile[gate, ty, tx] = w_hh[gate * hidden + unit0 + ty, k] if unit0 + ty < hidden and k < state else ZERO
        cuda.syncthreads()
        for kk in range(tile):
            h = h_tile[ty, kk]
            for gate in range(NUM_GATES):
                recurrent[gate] += h * w_tile[gate, tx, kk]
        cuda.syncthreads()
    b, j = row0 + ty, unit0 + tx
    if b < c_t.shape[0] and j < hidden:
        cell_forward_unit(gates[t % gates.shape[0]], b_ih, b_hh, c_prev, c_t, h_dst, h_dst_col, b, j, recurrent)


@cuda.jit(**CUDA_JIT_OPTIONS)
def forward_persistent(gates, b_ih, b_hh, w_hh, w_hr, h0, c0, reverse, step0, step1,
                       c_seq, h_cell_seq, out, out_col, h_n, c_n, units, proj_units, lanes):
    """Loop steps [step0, step1) of one layer and direction in one cooperative launch.

    Arguments as ``lstm_layer_forward``; the steps' input projections must be in ``gates``;
    h_n and c_n are written at the last step of the sequence.
    Block k owns hidden units [k*units, (k+1)*units) and projected features
    [k*proj_units, (k+1)*proj_units).  Each (batch row, unit) of the block is computed by a
    group of ``lanes`` threads (``group_lanes``): each thread takes every lanes-th term of the
    unit's four dot products h_prev @ w_hh rows, the group adds them up (``sum_groups``) and
    its first thread applies the gate math.  Dynamic shared memory, 4*units*(state+1) +
    proj_units*hidden + 4*threads elements, holds the block's rows of w_hh (gate rows of one
    unit side by side: row jj*4 + gate, each padded by one element so that the rows of the
    units a warp reads at once lie in different banks), of w_hr, and the groups' partial sums.
    Launch: a 1-D grid of co-resident blocks (cooperative), any block size that lanes divides.
    """
    weights = cuda.shared.array(0, gates.dtype)
    seq_len, batch = out.shape[0], out.shape[1]
    hidden, state, proj = c0.shape[1], h0.shape[1], w_hr.shape[0]
    thread, threads = cuda.threadIdx.x, cuda.blockDim.x
    unit0, p0 = cuda.blockIdx.x * units, cuda.blockIdx.x * proj_units
    n_units = slice_length(unit0, units, hidden)
    n_proj = slice_length(p0, proj_units, proj)
    row_stride = state + 1
    proj_base = NUM_GATES * units * row_stride
    partial_base = proj_base + proj_units * hidden
    for e in range(thread, NUM_GATES * n_units * state, threads):
        row, k = e // state, e % state
        weights[row * row_stride + k] = w_hh[(row % NUM_GATES) * hidden + unit0 + row // NUM_GATES, k]
    for e in range(thread, n_proj * hidden, threads):
        weights[proj_base + e] = w_hr[p0 + e // hidden, e % hidden]
    cuda.syncthreads()
    grid = cuda.cg.this_grid()
    recurrent = cuda.local.array(NUM_GATES, gates.dtype)
    items, groups = batch * n_units, threads // lanes
    group, lane = thread // lanes, thread % lanes
    for step in range(step0, step1):
        t, h_prev, c_prev, c_t, h_dst, h_dst_col = step_arrays(step, reverse, h0, c0, c_seq, h_cell_seq, out,
                                                               out_col)
        for first in range(0, items, groups):  # the same rounds in every thread of the block
            item = first + group
            b, jj = item // n_units, item % n_units  # past the last row for the round's idle groups
            for gate in range(NUM_GATES):
                recurrent[gate] = ZERO
            if item < items:
                for k in range(lane, state, lanes):
                    h = h_prev[b, k]
                    for gate in range(NUM_GATES):
                        recurrent[gate] += h * weights[(jj * NUM_GATES + gate) * row_stride + k]
            for gate in range(NUM_GATES):
                weights[partial_base + gate * threads + thread] = recurrent[gate]
            sum_groups(weights, partial_base, NUM_GATES, thread, threads, lanes)
            if lane == 0 and item < items:
                for gate in range(NUM_GATES):
                    recurrent[gate] = weights[partial_base + gate * threads + thread]
                j = unit0 + jj
                cell_forward_unit(gates[t % gates.shape[0]], b_ih, b_hh, c_prev, c_t, h_dst, h_dst_col, b, j,
                                  recurrent)
                if step == seq_len - 1:
                    c_n[b, j] = c_t[b, j]
                    if proj == 0:
                        h_n[b, j] = out[t, b, out_col + j]
        grid.sync()
        if proj > 0:
            for item in range(thread, batch * n_proj, threads):
                b, pp = item // n_proj, item % n_proj
                total = ZERO
                for j in range(hidden):
                    total += h_dst[b, j] * weights[proj_base + pp * hidden + j]
                out[t, b, out_col + p0 + pp] = total
                if step == seq_len - 1:
                    h_n[b, p0 + pp] = total
            grid.sync()


def _persistent_shape(plan, args, hidden, state, proj, itemsize):
    """(blocks, shared bytes) of ``forward_persistent``, (0, 0) when its weights do not fit."""
    def shared_elements(blocks):
        return (NUM_GATES * math.ceil(hidden / blocks) * (state + 1) + math.ceil(proj / blocks) * hidden
                + NUM_GATES * plan.threads)

    return persistent_grid(forward_persistent, args, plan.threads, itemsize, shared_elements, hidden)


def _steps_per_launch(w_hh, b_ih, b_hh, w_hr, h0, c0, reverse, plan, gates, c_seq, h_cell_seq, out, out_col,
                      step0, step1):
    """Loop steps [step0, step1) with one ``cell_forward_parallel`` launch (and a projection) per step."""
    seq_len, batch = out.shape[0], out.shape[1]
    hidden, state = c0.shape[1], h0.shape[1]
    step_kernel = cell_forward_parallel[(blocks_for(hidden, plan.tile), blocks_for(batch, plan.tile)),
                                        (plan.tile, plan.tile)]
    for step in range(step0, step1):
        step_kernel(gates, b_ih, b_hh, w_hh, h0, c0, reverse, step, c_seq, h_cell_seq, out, out_col)
        if w_hr.shape[0] > 0:
            t = step_time(step, seq_len, reverse)
            matmul(h_cell_seq[t % c_seq.shape[0]], w_hr, out[t, :, out_col:out_col + state], False, True, 0.0, plan)


def lstm_layer_forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, k, reverse, plan,
                       gates, c_seq, h_cell_seq, out, out_col, h_n, c_n):
    """Run one layer in one direction over the whole sequence (host function launching kernels).

    The numba.cuda twin of ``cpu_forward.lstm_layer_forward``: the same arguments, shapes and
    results (see there), as device arrays of one dtype, except that ``plan`` is the backend's
    CUDAPlan and ``gates`` keeps PyTorch's layout, (gate_slots, batch, 4*hidden).
    """
    h0, c0, h_n, c_n = h0[k], c0[k], h_n[k], c_n[k]
    seq_len, batch = x.shape[0], x.shape[1]
    hidden, state, proj = c0.shape[1], h0.shape[1], w_hr.shape[0]
    gate_slots = gates.shape[0]
    persistent_args = [gates, b_ih, b_hh, w_hh, w_hr, h0, c0, reverse, 0, 0, c_seq, h_cell_seq, out, out_col, h_n, c_n,
                       1, 1, 1]
    blocks, shared_bytes = (_persistent_shape(plan, persistent_args, hidden, state, proj, gates.dtype.itemsize)
                            if plan.persistent else (0, 0))
    if blocks:
        units = math.ceil(hidden / blocks)
        persistent_args[16:19] = units, math.ceil(proj / blocks), group_lanes(plan.threads, batch * units, state)
    block_starts = range(0, seq_len, gate_slots)
    for t0 in reversed(block_starts) if reverse else block_starts:
        t1 = min(seq_len, t0 + gate_slots)
        rows = (t1 - t0) * batch
        # Whole arrays need no slice (a device-array view costs the host tens of microseconds).
        x_block = x if t1 - t0 == seq_len else x[t0:t1]
        gates_block = gates if t1 - t0 == gate_slots else gates[:t1 - t0]
        matmul(x_block.reshape((rows, x.shape[2])), w_ih, gates_block.reshape((rows, gates.shape[2])),
               False, True, 0.0, plan)
        step0, step1 = (seq_len - t1, seq_len - t0) if reverse else (t0, t1)
        if blocks:
            persistent_args[8:10] = step0, step1
            forward_persistent[blocks, plan.threads, 0, shared_bytes](*persistent_args)
        else:
            _steps_per_launch(w_hh, b_ih, b_hh, w_hr, h0, c0, reverse, plan, gates, c_seq, h_cell_seq, out, out_col,
                              step0, step1)
    if not blocks:  # the persistent kernel wrote h_n and c_n itself
        t_last = step_time(seq_len - 1, seq_len, reverse)
        elementwise(COPY, out[t_last, :, out_col:out_col + state], None, h_n, plan)
        elementwise(COPY, c_seq[t_last % c_seq.shape[0]], None, c_n, plan)
