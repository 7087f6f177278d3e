"""``LSTM`` and ``LSTMCell``: PyTorch's ``nn.LSTM`` / ``nn.LSTMCell`` interface over NumPy arrays.

Same constructor arguments, parameter names, shapes, gate order (i, f, g, o),
initialisation and output shapes as PyTorch, so code and weights carry over.
Dimensions in the docstrings follow PyTorch's: L = sequence length,
N = batch size, D = 2 if bidirectional else 1, H_in = input_size,
H_cell = hidden_size, H_out = proj_size if proj_size > 0 else hidden_size.

Input dtype rule: the model computes in its own dtype (float32 by default,
float64 on request).  Any floating-point input (float16, float32, float64) is
converted to the model's dtype and results come back in it; integer, boolean,
complex and object arrays are refused with a TypeError.

Devices: ``device="cuda"`` (or ``.to("cuda")``) keeps parameters, gradients and
states on an NVIDIA GPU and runs the numba.cuda kernels.  Such a model takes
NumPy arrays (copied in, results copied back to NumPy) and GPU arrays through
``__cuda_array_interface__`` (Numba device arrays, CuPy arrays, PyTorch CUDA
tensors) without host copies, returning Numba device arrays.  ``grads`` stay on
the GPU; ``state_dict()`` returns host copies.
"""
import numbers
import warnings

import numpy as np

from . import engine
from .cuda import backend as cuda_backend
from .module import Module, check_bool, check_device, check_int, freeze, shape_tuple
from .params import LSTMConfig, parameter_shapes

__all__ = ["LSTM", "LSTMCell", "freeze"]

# The input ranks each layer accepts and how its messages name their shapes (by batch_first for LSTM).
_LSTM_INPUT_LAYOUTS = {False: {2: "(L, H_in)", 3: "(L, N, H_in)"}, True: {2: "(L, H_in)", 3: "(N, L, H_in)"}}
_CELL_INPUT_LAYOUTS = {1: "(H_in,)", 2: "(N, H_in)"}


def _with_batch_axis(array, axis):
    """A view of C-contiguous ``array`` (host or GPU) with a batch axis of size 1 inserted at ``axis``."""
    shape = tuple(array.shape)
    return array.reshape(shape[:axis] + (1,) + shape[axis:])


def _swap_leading_axes(array):
    """A C-contiguous (B, A, F) copy of an (A, B, F) array, on the device the array is on."""
    if isinstance(array, np.ndarray):
        return np.ascontiguousarray(array.transpose(1, 0, 2))
    return cuda_backend().swap_leading_axes(array)


class LSTM(Module):
    r"""Multi-layer LSTM over NumPy arrays, with ``torch.nn.LSTM``'s interface.

    For each element of the input sequence each layer computes::

        i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
        f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)          (h_t = W_hr h_t with proj_size > 0)

    Arguments as PyTorch's (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0), plus
    ``dtype`` ('float32' default or 'float64') and ``seed`` (int or
    numpy.random.Generator) for initialisation and dropout.  ``device`` is
    'cpu' (default) or 'cuda' / 'cuda:0' (see the module docstring); 'cuda'
    raises RuntimeError when no CUDA device is available, any other device
    ValueError.  LSTMCell takes ``device`` the same way.

    Call ``lstm(input, (h_0, c_0))`` with input of shape (L, N, H_in), (N, L, H_in)
    with batch_first, or (L, H_in) unbatched; h_0: (D*num_layers, N, H_out) and
    c_0: (D*num_layers, N, H_cell), or without the N axis for unbatched input;
    both default to zeros.  Returns ``output, (h_n, c_n)`` with output
    (L, N, D*H_out) (batch-first / unbatched like the input) and h_n, c_n shaped
    like h_0, c_0.  For a bidirectional LSTM, h_n holds the reverse direction's
    state after it has read the whole sequence, which is output[0, :, H_out:],
    not output[-1].
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, seed=None):
        if not isinstance(dropout, numbers.Real) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the probability "
                             f"of an element being zeroed, got {dropout!r}")
        input_size = check_int("input_size", input_size, 1)
        hidden_size = check_int("hidden_size", hidden_size, 1)
        num_layers = check_int("num_layers", num_layers, 1)
        proj_size = check_int("proj_size", proj_size, 0)
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
                             f"and hidden_size={hidden_size}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero "
                          f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=2)
        self.config = LSTMConfig(input_size, hidden_size, num_layers, check_bool("bias", bias),
                                 check_bool("batch_first", batch_first), float(dropout),
                                 check_bool("bidirectional", bidirectional), proj_size)
        self._init_parameters(self.config.shapes(), hidden_size, dtype, seed, check_device(device))

    def __getattr__(self, name):
        config = self.__dict__.get("config")
        if config is not None and name in LSTMConfig.__dataclass_fields__:
            return getattr(config, name)
        return super().__getattr__(name)

    def _config_dict(self):
        return dict(vars(self.config))

    def __repr__(self):
        c = self.config
        extra = [f"num_layers={c.num_layers}" if c.num_layers != 1 else "", "bias=False" if not c.bias else "",
                 "batch_first=True" if c.batch_first else "", f"dropout={c.dropout}" if c.dropout else "",
                 "bidirectional=True" if c.bidirectional else "", f"proj_size={c.proj_size}" if c.proj_size else ""]
        return f"LSTM({', '.join([str(c.input_size), str(c.hidden_size)] + [e for e in extra if e])})"

    def forward(self, input, hx=None):
        """Run the LSTM; see the class docstring for shapes.  Returns ``output, (h_n, c_n)``."""
        c = self.config
        x = self._input_array(input, _LSTM_INPUT_LAYOUTS[c.batch_first])
        batched = x.ndim == 3
        if not batched:
            x = _with_batch_axis(x, 1)
        elif c.batch_first:
            x = _swap_leading_axes(x)
        seq_len, batch = x.shape[0], x.shape[1]
        if seq_len == 0 or batch == 0:
            raise ValueError(f"Expected sequence length and batch size larger than 0, got input of shape "
                             f"{shape_tuple(input) if hasattr(input, 'shape') else shape_tuple(x)}")
        h0, c0 = self._initial_state(hx, batch, batched)
        output, h_n, c_n, tape = engine.forward(self._parameters, c, x, h0, c0, self.training, self._rng,
                                                backend=self._backend, workspace=self._workspace)
        if tape is not None:
            tape.layout = (batched, seq_len, batch)
            self._keep_tape(tape)
        if batched and not c.batch_first and self.device == "cpu":
            return output, (h_n, c_n)  # as they are: small models are called often
        output, h_n, c_n = self._for_caller(input, self._user_layout(output, batched), self._squeeze(h_n, batched),
                                            self._squeeze(c_n, batched))
        return output, (h_n, c_n)

    __call__ = forward

    def _initial_state(self, hx, batch, batched):
        """(h0, c0) as the engine takes them: None for zeros when ``hx`` is None."""
        if hx is None:
            return None, None
        h_shape, c_shape = self.config.state_shapes(batch)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2 or hx[0] is None or hx[1] is None:
            raise TypeError("hx must be a tuple (h_0, c_0) of two arrays, or None for zeros; "
                            f"got {type(hx).__name__}" + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        h0 = self._as_array(hx[0], "h_0")
        c0 = self._as_array(hx[1], "c_0")
        rank = 3 if batched else 2
        if h0.ndim != rank or c0.ndim != rank:
            raise ValueError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, h_0 and c_0 should also be "
                             f"{rank}-D but got ({h0.ndim}-D, {c0.ndim}-D) arrays")
        if not batched:
            h0, c0 = _with_batch_axis(h0, 1), _with_batch_axis(c0, 1)
        if h0.shape != h_shape:
            raise ValueError(f"Expected hidden[0] (h_0) size {self._squeeze_shape(h_shape, batched)}, "
                             f"got {self._squeeze_shape(h0.shape, batched)}")
        if c0.shape != c_shape:
            raise ValueError(f"Expected hidden[1] (c_0) size {self._squeeze_shape(c_shape, batched)}, "
                             f"got {self._squeeze_shape(c0.shape, batched)}")
        return h0, c0

    @staticmethod
    def _squeeze_shape(shape, batched):
        shape = tuple(int(n) for n in shape)
        return shape if batched else shape[:1] + shape[2:]

    @staticmethod
    def _squeeze(state, batched):
        return state if batched else state[:, 0, :]

    def _user_layout(self, sequence, batched):
        """A time-major (L, N, F) array in the layout of the user's input."""
        if not batched:
            return sequence[:, 0, :]
        if self.config.batch_first:
            return _swap_leading_axes(sequence)
        return sequence

    def _time_major(self, array, batched):
        """Inverse of ``_user_layout``."""
        if not batched:
            return _with_batch_axis(array, 1)
        if self.config.batch_first:
            return _swap_leading_axes(array)
        return array

    def backward(self, grad_output, grad_state=None):
        """Backpropagate through the most recent training-mode forward.

        grad_output: gradient of the loss w.r.t. ``output`` (same shape);
        grad_state: optional (grad_h_n, grad_c_n), either may be None for zeros.
        Accumulates parameter gradients into ``self.grads`` (same names and shapes as
        ``state_dict()``) and returns ``grad_input, (grad_h_0, grad_c_0)`` shaped like
        the forward's input and initial state.
        """
        tape = self._tapes[-1] if self._tapes else self._pop_tape()
        batched, seq_len, batch = tape.layout
        c = self.config
        features = c.num_directions * c.state_size
        if not batched:
            out_shape = (seq_len, features)
        else:
            out_shape = (batch, seq_len, features) if c.batch_first else (seq_len, batch, features)
        d_out = self._time_major(self._check_grad(grad_output, "grad_output", out_shape), batched)
        h_shape, c_shape = self.config.state_shapes(batch)
        grad_h_n, grad_c_n = grad_state if grad_state is not None else (None, None)
        grad_h_n = self._state_grad(grad_h_n, "grad_h_n", h_shape, batched)
        grad_c_n = self._state_grad(grad_c_n, "grad_c_n", c_shape, batched)
        self._pop_tape()
        grads, grads_beta = self._grads_for_backward()
        grad_x, grad_h0, grad_c0 = engine.backward(c, tape, d_out, grad_h_n, grad_c_n, grads, grads_beta)
        grad_x, grad_h0, grad_c0 = self._for_caller(grad_output, self._user_layout(grad_x, batched),
                                                    self._squeeze(grad_h0, batched), self._squeeze(grad_c0, batched))
        return grad_x, (grad_h0, grad_c0)

    def _state_grad(self, grad, name, shape, batched):
        if grad is None:
            return self._zeros(shape)
        array = self._check_grad(grad, name, self._squeeze_shape(shape, batched))
        return array if batched else _with_batch_axis(array, 1)


class LSTMCell(Module):
    """One LSTM step, with ``torch.nn.LSTMCell``'s interface.

    ``cell(input, (h, c))`` with input (N, H_in) or unbatched (H_in,) and h, c
    (N, H) or (H,) (zeros when hx is None) returns ``(h', c')``.  Parameters
    ``weight_ih`` (4H, H_in), ``weight_hh`` (4H, H), ``bias_ih``, ``bias_hh`` (4H,).

    Each training-mode call keeps what ``backward`` needs on a stack and
    ``backward`` takes the most recent, so stepping the cell over a sequence and
    then calling ``backward`` for the steps in reverse order is backpropagation
    through time.
    """

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, seed=None):
        input_size = check_int("input_size", input_size, 1)
        hidden_size = check_int("hidden_size", hidden_size, 1)
        self.config = LSTMConfig(input_size, hidden_size, bias=check_bool("bias", bias))
        self._init_parameters(parameter_shapes(input_size, hidden_size, bias=self.config.bias, cell=True),
                              hidden_size, dtype, seed, check_device(device))

    def __getattr__(self, name):
        config = self.__dict__.get("config")
        if config is not None and name in ("input_size", "hidden_size", "bias"):
            return getattr(config, name)
        return super().__getattr__(name)

    def _config_dict(self):
        return {"input_size": self.config.input_size, "hidden_size": self.config.hidden_size, "bias": self.config.bias}

    def __repr__(self):
        c = self.config
        return f"LSTMCell({c.input_size}, {c.hidden_size}{'' if c.bias else ', bias=False'})"

    def _layer_view(self, arrays):
        """The cell's {name: array} under the layer names the engine uses (weight_ih_l0, ...)."""
        return {f"{name}_l0": array for name, array in arrays.items()}

    def _layer_parameters(self):
        """``_layer_view`` of the parameters: one dict for as long as they are the same arrays, which
        lets the engine find the forward it prepared for them without comparing arrays."""
        kept = self.__dict__.get("_kept_layer_parameters")
        if kept is None or kept[0] is not self._parameters:
            kept = self.__dict__["_kept_layer_parameters"] = (self._parameters, self._layer_view(self._parameters))
        return kept[1]

    def forward(self, input, hx=None):
        """One step; returns ``(h', c')`` shaped like h, c."""
        c = self.config
        x = self._input_array(input, _CELL_INPUT_LAYOUTS)
        batched = x.ndim == 2
        x = x if batched else _with_batch_axis(x, 0)
        batch = x.shape[0]
        if batch == 0:
            raise ValueError(f"Expected batch size larger than 0, got input of shape {shape_tuple(x)}")
        h, cell = self._initial_state(hx, batch, batched)
        _, h_n, c_n, tape = engine.forward(self._layer_parameters(), c, _with_batch_axis(x, 0), h, cell,
                                           self.training, backend=self._backend, workspace=self._workspace)
        if tape is not None:
            tape.layout = (batched, batch)
            self._keep_tape(tape)
        return self._for_caller(input, self._unbatch(h_n[0], batched), self._unbatch(c_n[0], batched))

    __call__ = forward

    @staticmethod
    def _unbatch(array, batched):
        return array if batched else array[0]

    def _initial_state(self, hx, batch, batched):
        """(h, c), each (1, batch, hidden) as the engine takes them: None for zeros when ``hx`` is None."""
        if hx is None:
            return None, None
        shape = (batch, self.config.hidden_size)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2 or hx[0] is None or hx[1] is None:
            raise TypeError(f"hx must be a tuple (h, c) of two arrays, or None for zeros; got {type(hx).__name__}")
        states = []
        for index, name in enumerate(("h", "c")):
            state = self._as_array(hx[index], f"hx[{index}] ({name})")
            given = shape_tuple(state)
            state = state if batched else _with_batch_axis(state, 0) if state.ndim == 1 else state
            if state.shape != shape:
                raise ValueError(f"LSTMCell: Expected hx[{index}] ({name}) of shape "
                                 f"{shape if batched else shape[1:]}, got {given}")
            states.append(_with_batch_axis(state, 0))
        return tuple(states)

    def backward(self, grad_h, grad_c=None):
        """Backpropagate through the most recent training-mode step.

        grad_h, grad_c: gradients w.r.t. h' and c' (grad_c None for zeros).
        Accumulates into ``self.grads`` and returns ``grad_input, (grad_h, grad_c)`` for
        the step's input and incoming state.
        """
        tape = self._tapes[-1] if self._tapes else self._pop_tape()
        batched, batch = tape.layout
        shape = (batch, self.config.hidden_size) if batched else (self.config.hidden_size,)
        caller_grad_h = grad_h
        grad_h = self._check_grad(grad_h, "grad_h", shape)
        grad_c = self._zeros(shape) if grad_c is None else self._check_grad(grad_c, "grad_c", shape)
        if not batched:
            grad_h, grad_c = _with_batch_axis(grad_h, 0), _with_batch_axis(grad_c, 0)
        self._pop_tape()
        grads, grads_beta = self._grads_for_backward()
        grad_x, grad_h0, grad_c0 = engine.backward(
            self.config, tape,
            self._zeros((1,) + shape_tuple(grad_h)),
            _with_batch_axis(grad_h, 0), _with_batch_axis(grad_c, 0), self._layer_view(grads), grads_beta)
        grad_x, grad_h0, grad_c0 = self._for_caller(caller_grad_h, self._unbatch(grad_x[0], batched),
                                                    self._unbatch(grad_h0[0], batched), self._unbatch(grad_c0[0], batched))
        return grad_x, (grad_h0, grad_c0)
