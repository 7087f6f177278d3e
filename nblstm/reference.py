"""The NumPy reference LSTM: one time step at a time, written to be read.

It shares the weight layout of ``nblstm.params`` (PyTorch's): gates stacked
i, f, g, o along the rows of every weight.  Tests use it as a second oracle
beside PyTorch, and ``nblstm-bench`` runs it as the ``numpy`` backend.

Equations for one step (x_t: input, h, c: previous states):

    gates = x_t @ W_ih.T + b_ih + h @ W_hh.T + b_hh
    i, f, g, o = sigmoid(gates_i), sigmoid(gates_f), tanh(gates_g), sigmoid(gates_o)
    c' = f * c + i * g
    h' = o * tanh(c')                 (then h' = h' @ W_hr.T with a projection)

All arrays here are time-major: x (seq_len, batch, input_size), states
(num_layers * num_directions, batch, size).
"""
import numpy as np

from .params import NUM_GATES


def sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _layer_weights(params, config, layer, direction):
    names = config.names(layer, direction)
    w_ih, w_hh = params[names.weight_ih], params[names.weight_hh]
    bias = params[names.bias_ih] + params[names.bias_hh] if config.bias else np.zeros(w_ih.shape[0], w_ih.dtype)
    w_hr = params[names.weight_hr] if config.proj_size > 0 else None
    return w_ih, w_hh, bias, w_hr


def cell_step(x_t, h, c, w_ih, w_hh, bias, w_hr=None):
    """One LSTM step. Returns (h', c', saved) with saved = (i, f, g, o, c', o * tanh(c'))."""
    gates = x_t @ w_ih.T + h @ w_hh.T + bias
    i, f, g, o = np.split(gates, NUM_GATES, axis=1)
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
    c_new = f * c + i * g
    h_cell = o * np.tanh(c_new)
    h_new = h_cell @ w_hr.T if w_hr is not None else h_cell
    return h_new, c_new, (i, f, g, o, c_new, h_cell)


def lstm_forward(params, config, x, h0=None, c0=None, dropout_masks=None):
    """Forward pass of a whole LSTM.

    params: {name: array} in PyTorch's layout; config: nblstm.params.LSTMConfig
    x: (seq_len, batch, input_size); h0: (L*D, batch, state); c0: (L*D, batch, hidden)
    dropout_masks: optional list of num_layers - 1 arrays (seq_len, batch, D*state) of
        inverted-dropout scales multiplied into the input of layers 1, 2, ...
    Returns output (seq_len, batch, D*state), h_n, c_n and a tape for ``lstm_backward``.
    """
    seq_len, batch, _ = x.shape
    num_dirs, state, hidden = config.num_directions, config.state_size, config.hidden_size
    if h0 is None:
        h0 = np.zeros((config.num_layers * num_dirs, batch, state), x.dtype)
    if c0 is None:
        c0 = np.zeros((config.num_layers * num_dirs, batch, hidden), x.dtype)
    h_n, c_n = np.empty_like(h0), np.empty_like(c0)
    tape = []
    layer_input = x
    for layer in range(config.num_layers):
        if layer > 0 and dropout_masks is not None:
            layer_input = layer_input * dropout_masks[layer - 1]
        output = np.empty((seq_len, batch, num_dirs * state), x.dtype)
        for direction in range(num_dirs):
            k = layer * num_dirs + direction
            weights = _layer_weights(params, config, layer, direction)
            times = range(seq_len - 1, -1, -1) if direction == 1 else range(seq_len)
            h, c, saved = h0[k], c0[k], {}
            for t in times:
                h, c, saved[t] = cell_step(layer_input[t], h, c, *weights)
                output[t, :, direction * state:(direction + 1) * state] = h
            h_n[k], c_n[k] = h, c
            tape.append((layer, direction, layer_input, list(times), saved))
        layer_input = output
    return output, h_n, c_n, tape


def lstm_backward(params, config, tape, h0, c0, grad_output, grad_h_n=None, grad_c_n=None, dropout_masks=None):
    """Backpropagation through time for ``lstm_forward``'s tape.

    grad_output: (seq_len, batch, D*state); grad_h_n, grad_c_n like h_n, c_n (zeros if None).
    Returns grad_x, grad_h0, grad_c0 and {name: gradient} for every parameter.
    """
    num_dirs, state = config.num_directions, config.state_size
    grad_h_n = np.zeros_like(h0) if grad_h_n is None else grad_h_n
    grad_c_n = np.zeros_like(c0) if grad_c_n is None else grad_c_n
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    grad_h0, grad_c0 = np.zeros_like(h0), np.zeros_like(c0)
    grad_layer_output = grad_output
    for layer in reversed(range(config.num_layers)):
        layer_tape = [entry for entry in tape if entry[0] == layer]
        grad_layer_input = np.zeros_like(layer_tape[0][2])
        for _, direction, layer_input, times, saved in layer_tape:
            k = layer * num_dirs + direction
            names = config.names(layer, direction)
            w_ih, w_hh, _, w_hr = _layer_weights(params, config, layer, direction)
            dh_next, dc_next = grad_h_n[k].copy(), grad_c_n[k].copy()
            for position in reversed(range(len(times))):
                t = times[position]
                i, f, g, o, c, h_cell = saved[t]
                prev_t = times[position - 1] if position > 0 else None
                c_prev = saved[prev_t][4] if prev_t is not None else c0[k]
                h_prev = _state_after(saved, prev_t, w_hr) if prev_t is not None else h0[k]
                dh = grad_layer_output[t, :, direction * state:(direction + 1) * state] + dh_next
                if w_hr is not None:
                    grads[names.weight_hr] += dh.T @ h_cell
                    dh = dh @ w_hr
                tanh_c = np.tanh(c)
                dc = dc_next + dh * o * (1.0 - tanh_c ** 2)
                d_gates = np.concatenate([
                    dc * g * i * (1.0 - i),           # input gate
                    dc * c_prev * f * (1.0 - f),      # forget gate
                    dc * i * (1.0 - g ** 2),          # cell candidate
                    dh * tanh_c * o * (1.0 - o),      # output gate
                ], axis=1)
                grads[names.weight_ih] += d_gates.T @ layer_input[t]
                grads[names.weight_hh] += d_gates.T @ h_prev
                if config.bias:
                    grads[names.bias_ih] += d_gates.sum(axis=0)
                    grads[names.bias_hh] += d_gates.sum(axis=0)
                grad_layer_input[t] += d_gates @ w_ih
                dh_next = d_gates @ w_hh
                dc_next = dc * f
            grad_h0[k], grad_c0[k] = dh_next, dc_next
        if layer > 0 and dropout_masks is not None:
            grad_layer_input = grad_layer_input * dropout_masks[layer - 1]
        grad_layer_output = grad_layer_input
    return grad_layer_output, grad_h0, grad_c0, grads


def _state_after(saved, t, w_hr):
    """h after time step t, rebuilt from the saved values."""
    h_cell = saved[t][5]
    return h_cell @ w_hr.T if w_hr is not None else h_cell
