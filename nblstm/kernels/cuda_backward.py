"""Backpropagation through time for one LSTM layer in one direction on an NVIDIA GPU: the twin of ``cpu_backward``.

The per-step chain runs backwards in time.  Each step:

1. (with projection) dh_cell = dh @ w_hr;
2. each (batch row, hidden unit) turns dh and the running dc into the gate
   gradients (written over the saved activations in ``gates``) and the next dc;
3. dh = d_gates @ w_hh, the gradient flowing into the previous step, to which
   that step's output gradient is added in the same kernel.

As in the forward pass this runs either as per-step launches (a tiled product
for 1, ``cell_backward_parallel`` for 2, ``recurrent_gradient_parallel`` for 3)
or, for small batches, as one cooperative ``backward_persistent`` launch whose
blocks keep their columns of w_hh and w_hr in shared memory and meet at a
grid-wide barrier between phases.

After the loop the weight gradients are a few large tiled products over all
time steps at once (``d_gates.T @ x`` and so on), and the bias gradient one
column sum written into both b_ih's and b_hh's.  Each parameter gradient is set
to its new part + dw_beta * itself: 1 accumulates, as PyTorch accumulates
``.grad``, 0 overwrites what ``zero_grad`` left to be zeros.
"""
import math

from numba import cuda

from ..params import NUM_GATES
from .cuda_activations import tanh
from .cuda_common import (
    ADD,
    CUDA_JIT_OPTIONS,
    MAX_TILE,
    ONE,
    PADDED_TILE,
    ZERO,
    blocks_for,
    elementwise,
    gemm_tile,
    group_lanes,
    matmul,
    persistent_grid,
    slice_length,
    sum_groups,
)
from .cuda_forward import step_time, time_index


@cuda.jit(device=True)
def cell_backward_unit(gates_t, c_t, c_prev, dh, dc_in, dc_out, b, j):
    """Gate gradients of hidden unit j in batch row b.

    gates_t:       (batch, 4*hidden) activations i, f, g, o; on return gates_t[b, gate*hidden + j]
                   hold the gradients of the pre-activation gates
    c_t, c_prev:   (batch, hidden) cell state after and before the step
    dh:            the gradient of o * tanh(c_t)[b, j] (a scalar)
    dc_in, dc_out: (batch, hidden) the gradient of c_t from later steps is read from dc_in[b, j],
                   that of c_prev written to dc_out[b, j] (they may be one array)
    """
    hidden = c_t.shape[1]
    f_rows, g_rows, o_rows = hidden, 2 * hidden, 3 * hidden
    i_gate = gates_t[b, j]
    f_gate = gates_t[b, f_rows + j]
    g_gate = gates_t[b, g_rows + j]
    o_gate = gates_t[b, o_rows + j]
    tanh_c = tanh(c_t[b, j])
    dc_t = dc_in[b, j] + dh * o_gate * (ONE - tanh_c * tanh_c)
    gates_t[b, j] = dc_t * g_gate * i_gate * (ONE - i_gate)
    gates_t[b, f_rows + j] = dc_t * c_prev[b, j] * f_gate * (ONE - f_gate)
    gates_t[b, g_rows + j] = dc_t * i_gate * (ONE - g_gate * g_gate)
    gates_t[b, o_rows + j] = dh * tanh_c * o_gate * (ONE - o_gate)
    dc_out[b, j] = dc_t * f_gate


@cuda.jit(device=True)
def backward_step_state(step, reverse, c0, c_seq, dc_n, dc, dc0):
    """What backward loop step ``step`` (seq_len - 1 down to 0) reads and writes of the cell state,
    as (t, t_prev, c_prev, dc_in, dc_out): the time it visits and the one before it (meaningless
    at the first step), the cell state before the step (c0 at the first), where the gradient of
    c_t comes from (dc_n at the last step, else dc) and where that of c_prev goes (dc0 at the
    first step, else dc).  Arguments as ``lstm_layer_backward``.
    """
    seq_len = c_seq.shape[0]
    t = time_index(step, seq_len, reverse)
    t_prev = time_index(step - 1, seq_len, reverse)
    c_prev = c0 if step == 0 else c_seq[t_prev]
    dc_in = dc_n if step == seq_len - 1 else dc
    dc_out = dc0 if step == 0 else dc
    return t, t_prev, c_prev, dc_in, dc_out


@cuda.jit(**CUDA_JIT_OPTIONS)
def cell_backward_parallel(gates, c_seq, c0, dh_cell, dc_n, dc, dc0, reverse, step):
    """``cell_backward_unit`` for every (batch row, hidden unit) of backward loop step ``step``.

    dh_cell: (batch, hidden) the gradient of the step's o * tanh(c_t); the other arguments as
    ``lstm_layer_backward``, whole arrays (``backward_step_state`` takes the step's slots:
    views built on the host cost it tens of microseconds each).
    Launch: blocks of (tile, tile) threads over (hidden units, batch rows).
    """
    t, _, c_prev, dc_in, dc_out = backward_step_state(step, reverse, c0, c_seq, dc_n, dc, dc0)
    j, b = cuda.grid(2)
    if b < c0.shape[0] and j < c0.shape[1]:
        cell_backward_unit(gates[t], c_seq[t], c_prev, dh_cell[b, j], dc_in, dc_out, b, j)


@cuda.jit(**CUDA_JIT_OPTIONS)
def recurrent_gradient_parallel(gates, w_hh, d_out, out_col, dh0, dh_seq, dh, reverse, step):
    """The gradient of h_{t-1} at backward loop step ``step``: d_gates_t @ w_hh plus the output
    gradient of time t-1 (d_out's columns of this direction) into dh, or into the step before's
    slot of dh_seq with a projection; d_gates_t @ w_hh alone into dh0 at the first step.
    Arguments as ``lstm_layer_backward``.  Launch: as ``gemm_tiles`` over (batch, state).
    """
    seq_len = gates.shape[0]
    t = time_index(step, seq_len, reverse)
    t_prev = time_index(step - 1, seq_len, reverse)
    first = step == 0
    dh_prev = dh0 if first else dh_seq[t_prev] if dh_seq.shape[0] > 0 else dh
    addend = dh0 if first else d_out[t_prev, :, out_col:out_col + dh0.shape[1]]
    gemm_tile(gates[t], w_hh, dh_prev, False, False, ZERO if first else ONE, addend)


@cuda.jit(**CUDA_JIT_OPTIONS)
def backward_persistent(w_hh, w_hr, c0, gates, c_seq, reverse, d_out, out_col, dc_n,
                        dh, dc, dh_seq, dh0, dc0, units, state_units, lanes):
    """The whole backward chain of one layer and direction in one cooperative launch.

    Arguments as ``lstm_layer_backward``.  On entry the gradient of the last visited h_t
    (dh_n plus its output gradient) must be in dh, or in dh_seq[t] with projection.
    Block k owns hidden units [k*units, (k+1)*units) in the gate phase and columns
    [k*state_units, (k+1)*state_units) of dh in the product phase, where each (batch row,
    column) is a dot product over the 4*hidden gate rows shared by a group of ``lanes``
    threads (``group_lanes``, ``sum_groups``).  Dynamic shared memory, state_units*(4*hidden+1)
    + units*proj + threads elements, holds the block's columns of w_hh (each contiguous and
    padded by one element, so that the columns a warp reads at once lie in different banks),
    its columns of w_hr (each contiguous), and the groups' partial sums.
    Launch: a 1-D grid of co-resident blocks (cooperative), any block size that lanes divides.
    """
    weights = cuda.shared.array(0, gates.dtype)
    seq_len, batch, gate_rows = gates.shape
    hidden, state, proj = c0.shape[1], dh0.shape[1], w_hr.shape[0]
    thread, threads = cuda.threadIdx.x, cuda.blockDim.x
    unit0, col0 = cuda.blockIdx.x * units, cuda.blockIdx.x * state_units
    n_units = slice_length(unit0, units, hidden)
    n_cols = slice_length(col0, state_units, state)
    col_stride = gate_rows + 1
    proj_base = state_units * col_stride
    partial_base = proj_base + units * proj
    for e in range(thread, n_cols * gate_rows, threads):
        weights[(e // gate_rows) * col_stride + e % gate_rows] = w_hh[e % gate_rows, col0 + e // gate_rows]
    for e in range(thread, n_units * proj, threads):
        weights[proj_base + e] = w_hr[e % proj, unit0 + e // proj]
    cuda.syncthreads()
    grid = cuda.cg.this_grid()
    items, groups = batch * n_cols, threads // lanes
    group, lane = thread // lanes, thread % lanes
    for step in range(seq_len - 1, -1, -1):
        t, t_prev, c_prev, dc_in, dc_out = backward_step_state(step, reverse, c0, c_seq, dc_n, dc, dc0)
        dh_t = dh_seq[t] if proj > 0 else dh
        for item in range(thread, batch * n_units, threads):
            b, jj = item // n_units, item % n_units
            if proj > 0:
                dh_value = ZERO
                for p in range(proj):
                    dh_value += dh_t[b, p] * weights[proj_base + jj * proj + p]
            else:
                dh_value = dh_t[b, unit0 + jj]
            cell_backward_unit(gates[t], c_seq[t], c_prev, dh_value, dc_in, dc_out, b, unit0 + jj)
        grid.sync()
        dh_next = dh0 if step == 0 else dh_seq[t_prev] if proj > 0 else dh
        for first in range(0, items, groups):  # the same rounds in every thread of the block
            item = first + group
            b, kk = item // n_cols, item % n_cols  # past the last row for the round's idle groups
            total = ZERO
            if item < items:
                for r in range(lane, gate_rows, lanes):
                    total += gates[t, b, r] * weights[kk * col_stride + r]
            weights[partial_base + thread] = total
            sum_groups(weights, partial_base, 1, thread, threads, lanes)
            if lane == 0 and item < items:
                total = weights[partial_base + thread]
                if step > 0:
                    total += d_out[t_prev, b, out_col + col0 + kk]
                dh_next[b, col0 + kk] = total
        grid.sync()


@cuda.jit(**CUDA_JIT_OPTIONS)
def bias_gradients_parallel(db_ih, db_hh, d_gates, beta):
    """db_ih and db_hh (cols,) = d_gates.sum(axis=0) + beta * themselves for d_gates (rows, cols), beta
    0 or 1 (0 reads nothing).

    Launch: blocks of (tile, tile) threads, grid (ceil(cols / tile),): threadIdx.x picks the
    column, threadIdx.y strides over the rows, then row 0 of the block adds the partial sums.
    """
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * cuda.blockDim.x + tx
    partial = cuda.shared.array((MAX_TILE, PADDED_TILE), d_gates.dtype)
    running = ZERO
    if col < d_gates.shape[1]:
        for row in range(ty, d_gates.shape[0], cuda.blockDim.y):
            running += d_gates[row, col]
    partial[ty, tx] = running
    cuda.syncthreads()
    if ty == 0 and col < d_gates.shape[1]:
        for other in range(1, cuda.blockDim.y):
            running += partial[other, tx]
        db_ih[col] = running + db_ih[col] if beta != 0 else running
        db_hh[col] = running + db_hh[col] if beta != 0 else running


def _persistent_shape(plan, args, hidden, state, proj, itemsize):
    """(blocks, shared bytes) of ``backward_persistent``, (0, 0) when its weights do not fit."""
    def shared_elements(blocks):
        return math.ceil(state / blocks) * (NUM_GATES * hidden + 1) + math.ceil(hidden / blocks) * proj + plan.threads

    return persistent_grid(backward_persistent, args, plan.threads, itemsize, shared_elements, hidden)


def _steps_per_launch(w_hh, w_hr, c0, gates, c_seq, reverse, plan, d_out, out_col, dc_n,
                      dh, dc, dh_cell, dh_seq, dh0, dc0):
    """The backward chain with per-step launches: [projection product,] gate kernel, recurrent product."""
    seq_len, batch = gates.shape[0], gates.shape[1]
    projecting = w_hr.shape[0] > 0
    tile, rows = plan.tile, blocks_for(batch, plan.tile)
    cell_step = cell_backward_parallel[(blocks_for(c0.shape[1], tile), rows), (tile, tile)]
    product_step = recurrent_gradient_parallel[(blocks_for(dh0.shape[1], tile), rows), (tile, tile)]
    for step in range(seq_len - 1, -1, -1):
        if projecting:
            matmul(dh_seq[step_time(step, seq_len, reverse)], w_hr, dh_cell, False, False, 0.0, plan)
        cell_step(gates, c_seq, c0, dh_cell if projecting else dh, dc_n, dc, dc0, reverse, step)
        product_step(gates, w_hh, d_out, out_col, dh0, dh_seq, dh, reverse, step)


def lstm_layer_backward(x, w_ih, w_hh, w_hr, h0, c0, out, out_col, gates, c_seq, h_cell_seq,
                        reverse, plan, d_out, dh_n, dc_n, dh, dc, dh_cell, dh_seq,
                        dx, dx_beta, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dw_beta):
    """Backward pass of ``lstm_layer_forward`` (training mode) for one layer and direction.

    The numba.cuda twin of ``cpu_backward.lstm_layer_backward``: the same arguments, shapes and
    results (see there), as device arrays of one dtype, except that ``plan`` is the backend's
    CUDAPlan and ``gates`` keeps PyTorch's layout, (seq_len, batch, 4*hidden).
    """
    seq_len, batch = x.shape[0], x.shape[1]
    hidden, state, proj = c0.shape[1], h0.shape[1], w_hr.shape[0]
    projecting = proj > 0
    t_first = step_time(seq_len - 1, seq_len, reverse)
    elementwise(ADD, dh_n, d_out[t_first, :, out_col:out_col + state], dh_seq[t_first] if projecting else dh, plan)
    persistent_args = (w_hh, w_hr, c0, gates, c_seq, reverse, d_out, out_col, dc_n, dh, dc, dh_seq, dh0, dc0, 1, 1, 1)
    blocks, shared_bytes = (_persistent_shape(plan, persistent_args, hidden, state, proj, gates.dtype.itemsize)
                            if plan.persistent else (0, 0))
    if blocks:
        state_units = math.ceil(state / blocks)
        backward_persistent[blocks, plan.threads, 0, shared_bytes](
            *persistent_args[:-3], math.ceil(hidden / blocks), state_units,
            group_lanes(plan.threads, batch * state_units, NUM_GATES * hidden))
    else:
        _steps_per_launch(w_hh, w_hr, c0, gates, c_seq, reverse, plan, d_out, out_col, dc_n,
                          dh, dc, dh_cell, dh_seq, dh0, dc0)

    rows = seq_len * batch
    d_gates = gates.reshape((rows, gates.shape[2]))
    matmul(d_gates, x.reshape((rows, x.shape[2])), dw_ih, True, False, dw_beta, plan)
    # h_{t-1} of every step is the output row of the step before it (h0 for the first step).
    h_seq = out.reshape((rows, out.shape[2]))[:, out_col:out_col + state]
    later, earlier = (0, batch) if reverse else (batch, 0)
    matmul(d_gates[later:later + rows - batch], h_seq[earlier:earlier + rows - batch], dw_hh, True, False, dw_beta,
           plan)
    first = rows - batch if reverse else 0
    matmul(d_gates[first:first + batch], h0, dw_hh, True, False, 1.0, plan)
    if db_ih.shape[0] > 0:
        bias_gradients_parallel[blocks_for(db_ih.shape[0], plan.tile), (plan.tile, plan.tile)](
            db_ih, db_hh, d_gates, d_gates.dtype.type(dw_beta))
    if projecting:
        matmul(dh_seq.reshape((rows, state)), h_cell_seq.reshape((rows, hidden)), dw_hr, True, False, dw_beta, plan)
    matmul(d_gates, w_ih, dx.reshape((rows, dx.shape[2])), False, False, dx_beta, plan)
