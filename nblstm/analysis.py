"""Gradient flow through time: how much of a loss's gradient reaches each step's state.

``gradient_flow(lstm, x)`` steps an ``LSTMCell`` per layer (loaded with that
layer's weights) over the sequence, then backpropagates step by step with
``LSTMCell.backward``, recording the gradient w.r.t. every step's state.  The
loss depends on the top layer's last output only, so the record shows how the
gradient fades (or, with forget gates near 1, survives) going back in time.
"""
from dataclasses import dataclass

import numpy as np

from .api import LSTMCell
from .module import as_float_array
from .params import GATES, layer_names
from .reference import sigmoid


@dataclass(frozen=True)
class GradientFlow:
    """Gradients of the loss w.r.t. every layer's state at every step.

    grad_h[k, t], grad_c[k, t]: (N, H) total derivatives of the loss w.r.t. h_t and
    c_t of layer k, as autograd gives them for per-step state tensors: h_t feeds step
    t + 1 and layer k + 1; c_t feeds step t + 1 and h_t = o_t * tanh(c_t).  t = 0 is
    the initial state, t = L the last step.  Arrays of shape (num_layers, L + 1, N, H).
    """

    grad_h: np.ndarray
    grad_c: np.ndarray

    @property
    def h_norm(self):
        """(num_layers, L + 1): the 2-norm of grad_h over batch and hidden units."""
        return _norms(self.grad_h)

    @property
    def c_norm(self):
        """(num_layers, L + 1): the 2-norm of grad_c over batch and hidden units."""
        return _norms(self.grad_c)


def _norms(grads):
    return np.linalg.norm(grads.reshape(grads.shape[:2] + (-1,)), axis=-1)


def _layer_cell(lstm, layer):
    """An LSTMCell holding layer ``layer`` of ``lstm`` (forward direction)."""
    c = lstm.config
    input_size = c.input_size if layer == 0 else c.hidden_size
    cell = LSTMCell(input_size, c.hidden_size, bias=c.bias, dtype=lstm.dtype)
    params = dict(lstm.named_parameters())
    cell.load_state_dict({cell_name: params[name] for name, cell_name in
                          zip(c.names(layer, 0).present(), layer_names(0, 0, c.bias, 0, cell=True).present())})
    return cell


def _time_major(lstm, input):
    """input as (L, N, H_in), from the layouts LSTM accepts."""
    x = as_float_array(input, "input", lstm.dtype)
    if x.ndim == 2:
        return x[:, None, :]
    if x.ndim != 3 or x.shape[-1] != lstm.config.input_size:
        raise ValueError(f"input must be (L, N, {lstm.config.input_size}) (batch-first if the LSTM is) or "
                         f"unbatched (L, {lstm.config.input_size}), got shape {x.shape}")
    return np.ascontiguousarray(x.transpose(1, 0, 2)) if lstm.config.batch_first else x


def _batched(lstm, value, name, shape, fill=0.0):
    """``value`` as an array of ``shape``, accepting it without the batch axis when the batch is one;
    ``fill`` everywhere when value is None."""
    if value is None:
        return np.full(shape, fill, lstm.dtype)
    array = as_float_array(value, name, lstm.dtype)
    batch_axis = len(shape) - 2
    if shape[batch_axis] == 1 and array.ndim == len(shape) - 1:
        array = np.expand_dims(array, batch_axis)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    return array


def gradient_flow(lstm, input, hx=None, grad_output=None):
    """Backpropagate a loss on the last step's output through time, recording every state's gradient.

    lstm: an ``nblstm.LSTM`` (unidirectional, without projection; dropout is not applied).
    input: (L, N, H_in), (N, L, H_in) if batch_first, or unbatched (L, H_in).
    hx: optional (h_0, c_0), each (num_layers, N, H); zeros by default.
    grad_output: dLoss/d(top layer's h_L), (N, H); ones by default, i.e. the loss is
    the sum of the last step's output.
    Returns a ``GradientFlow`` (unbatched input is treated as a batch of one).
    """
    c = lstm.config
    if c.bidirectional or c.proj_size:
        raise ValueError("gradient_flow needs a unidirectional LSTM without projection "
                         f"(got bidirectional={c.bidirectional}, proj_size={c.proj_size})")
    x = _time_major(lstm, input)
    seq_len, batch, _ = x.shape
    h0, c0 = (_batched(lstm, state, name, (c.num_layers, batch, c.hidden_size))
              for state, name in zip(hx or (None, None), ("h_0", "c_0")))
    cells = [_layer_cell(lstm, layer) for layer in range(c.num_layers)]

    dh_dc = []  # per layer, (L, N, H): the partial derivative of h_t w.r.t. c_t
    layer_input = x
    for layer, cell in enumerate(cells):
        h_seq, c_seq = _step_forward(cell, layer_input, h0[layer], c0[layer])
        dh_dc.append(_output_gate(lstm, layer, layer_input, h0[layer], h_seq) * (1 - np.tanh(c_seq) ** 2))
        layer_input = h_seq

    grad_h = np.zeros((c.num_layers, seq_len + 1, batch, c.hidden_size), lstm.dtype)
    grad_c = np.zeros_like(grad_h)
    grad_from_above = np.zeros((seq_len, batch, c.hidden_size), lstm.dtype)
    grad_from_above[-1] = _batched(lstm, grad_output, "grad_output", (batch, c.hidden_size), fill=1.0)
    for layer in reversed(range(c.num_layers)):  # backward: pops the cells' tapes in reverse order
        grad_h_next = grad_c_next = np.zeros((batch, c.hidden_size), lstm.dtype)
        grad_below = np.empty((seq_len, batch, cells[layer].input_size), lstm.dtype)
        for t in reversed(range(seq_len)):
            grad_h[layer, t + 1] = grad_from_above[t] + grad_h_next
            grad_c[layer, t + 1] = grad_c_next + grad_h[layer, t + 1] * dh_dc[layer][t]
            grad_below[t], (grad_h_next, grad_c_next) = cells[layer].backward(grad_h[layer, t + 1], grad_c_next)
        grad_h[layer, 0], grad_c[layer, 0] = grad_h_next, grad_c_next
        grad_from_above = grad_below
    return GradientFlow(grad_h, grad_c)


def _step_forward(cell, layer_input, h, c):
    """Step ``cell`` over layer_input (L, N, H_in) in training mode; returns h_seq, c_seq (L, N, H)."""
    h_seq, c_seq = [], []
    for x_t in layer_input:
        h, c = cell(x_t, (h, c))
        h_seq.append(h)
        c_seq.append(c)
    return np.stack(h_seq), np.stack(c_seq)


def _output_gate(lstm, layer, layer_input, h0, h_seq):
    """o_t of every step, (L, N, H), from the output-gate rows of the layer's weights."""
    names, hidden = lstm.config.names(layer, 0), lstm.config.hidden_size
    params = dict(lstm.named_parameters())
    gate = GATES.index("o")
    rows = slice(gate * hidden, (gate + 1) * hidden)
    h_prev = np.concatenate([h0[None], h_seq[:-1]])
    z = layer_input @ params[names.weight_ih][rows].T + h_prev @ params[names.weight_hh][rows].T
    if lstm.config.bias:
        z += params[names.bias_ih][rows] + params[names.bias_hh][rows]
    return sigmoid(z)
