"""Layers to put around an LSTM: ``Linear``, ``LastStep`` and the ``Sequential`` that chains them.

Every layer follows the LSTM's training protocol: ``layer(x)`` runs forward
(in training mode it keeps what backward needs on a stack), ``layer.backward(grad)``
takes the gradient of the loss w.r.t. the latest forward's result, accumulates
parameter gradients into ``layer.grads`` (same keys as ``named_parameters()``)
and returns the gradient w.r.t. that forward's input.
"""
import numpy as np

from ..engine import matmul
from ..module import Module, as_float_array, check_int


class Linear(Module):
    """``torch.nn.Linear``: y = x W^T + b over the last axis.

    Parameters ``weight`` (out_features, in_features) and ``bias`` (out_features,),
    both ~ U(-1/sqrt(in_features), 1/sqrt(in_features)) as in PyTorch.
    ``linear(x)`` with x (..., in_features) returns (..., out_features).
    ``dtype`` ('float32' default or 'float64') and ``seed`` as for ``LSTM``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=None, seed=None):
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.bias_enabled = bool(bias)
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias_enabled:
            shapes["bias"] = (self.out_features,)
        # init_parameters draws U(-1/sqrt(n), 1/sqrt(n)) with n its size argument: here in_features
        self._init_parameters(shapes, self.in_features, dtype, seed)

    def _config_dict(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias_enabled}

    def __repr__(self):
        return f"Linear(in_features={self.in_features}, out_features={self.out_features}, bias={self.bias_enabled})"

    def forward(self, input):
        """input (..., in_features) -> (..., out_features)."""
        x = as_float_array(input, "input", self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: Expected input of shape (..., {self.in_features}), got {x.shape}")
        rows = x.reshape(-1, self.in_features)
        y = np.empty((rows.shape[0], self.out_features), self.dtype)
        matmul(rows, self._parameters["weight"], y, trans_b=True)  # not NumPy's @: see engine.matmul
        y = y.reshape(x.shape[:-1] + (self.out_features,))
        if self.bias_enabled:
            y += self._parameters["bias"]
        if self.training:
            self._keep_tape(x)
        return y

    __call__ = forward

    def backward(self, grad_output):
        """grad_output (..., out_features) -> grad_input (..., in_features); accumulates ``grads``."""
        x = self._tapes[-1] if self._tapes else self._pop_tape()
        grad = self._check_grad(grad_output, "grad_output", x.shape[:-1] + (self.out_features,))
        self._pop_tape()
        rows = grad.reshape(-1, self.out_features)
        grads, beta = self._grads_for_backward()
        matmul(rows, x.reshape(-1, self.in_features), grads["weight"], trans_a=True, beta=beta)
        if self.bias_enabled:
            if beta:
                grads["bias"] += rows.sum(axis=0)
            else:
                grads["bias"][...] = rows.sum(axis=0)
        grad_input = np.empty((rows.shape[0], self.in_features), self.dtype)
        matmul(rows, self._parameters["weight"], grad_input)
        return grad_input.reshape(x.shape)


class LastStep:
    """The last time step of a sequence, e.g. of an LSTM's output, for a head that predicts from it.

    input (L, N, F) -> (N, F); with ``batch_first=True`` (N, L, F) -> (N, F);
    unbatched (L, F) -> (F,).  ``backward`` puts the gradient into the last
    step's slot of a zero gradient shaped like the input.  For a bidirectional
    LSTM the reverse half of ``output[-1]`` has only read the last element; use
    ``h_n`` if you need its summary of the whole sequence.
    """

    def __init__(self, batch_first=False):
        self.batch_first = bool(batch_first)
        self.training = True
        self.grads = {}  # no parameters
        self._shapes = []

    def __repr__(self):
        return f"LastStep(batch_first={self.batch_first})" if self.batch_first else "LastStep()"

    def zero_grad(self):
        """Nothing to reset: no parameters."""

    def _time_axis(self, ndim):
        return 1 if self.batch_first and ndim == 3 else 0

    def forward(self, input):
        x = np.asarray(input)
        if x.ndim not in (2, 3):
            raise ValueError(f"LastStep: Expected a 2-D (L, F) or 3-D sequence, got {x.ndim}-D of shape {x.shape}")
        if self.training:
            self._shapes.append((x.shape, x.dtype))
        return np.take(x, -1, axis=self._time_axis(x.ndim))

    __call__ = forward

    def backward(self, grad_output):
        """grad_output shaped like the forward's result -> a gradient shaped like its input."""
        if not self._shapes:
            raise RuntimeError("LastStep.backward needs a forward pass in training mode first")
        shape, dtype = self._shapes[-1]
        axis = self._time_axis(len(shape))
        grad = np.asarray(grad_output)
        expected = shape[:axis] + shape[axis + 1:]
        if grad.shape != expected:
            raise ValueError(f"grad_output must have the shape of the forward result {expected}, got {grad.shape}")
        self._shapes.pop()
        grad_input = np.zeros(shape, dtype)
        np.moveaxis(grad_input, axis, 0)[-1] = grad
        return grad_input

    def named_parameters(self):
        return iter(())

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)


class Sequential:
    """``torch.nn.Sequential`` for nblstm layers: each layer's output is the next one's input.

    A layer that returns ``(output, state)`` (``LSTM``, ``LSTMCell``) passes only
    ``output`` on, and its final state gets no gradient.  ``backward(grad)`` runs
    the layers' ``backward`` in reverse and returns the gradient w.r.t. the input.
    Parameters and gradients are named ``"{index}.{name}"`` as in PyTorch (e.g.
    ``"0.weight_ih_l0"``, ``"2.weight"``); each layer may appear only once, so an
    optimizer sees every parameter once.

    Example::

        model = Sequential(LSTM(1, 200, num_layers=2), LastStep(), Linear(200, 1))
        pred = model(x)                    # x (L, N, 1) -> pred (N, 1)
        model.backward(loss_fn.backward())
    """

    def __init__(self, *layers):
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("Sequential: each layer may appear only once (its parameters would be updated twice)")
        self.layers = list(layers)
        self.training = True

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        lines = "".join(f"\n  ({index}): {layer!r}" for index, layer in enumerate(self.layers))
        return f"Sequential({lines}\n)"

    def forward(self, input):
        for layer in self.layers:
            input = _output(layer(input))
        return input

    __call__ = forward

    def backward(self, grad_output):
        for layer in reversed(self.layers):
            grad_output = _output(layer.backward(grad_output))
        return grad_output

    def named_parameters(self):
        """("{index}.{name}", array) pairs; the arrays are the layers' live parameters."""
        return iter([(f"{index}.{name}", value) for index, layer in enumerate(self.layers)
                     for name, value in layer.named_parameters()])

    def parameters(self):
        return iter([value for _, value in self.named_parameters()])

    @property
    def grads(self):
        """{"{index}.{name}": gradient}: the layers' live gradient arrays under the parameter names."""
        return {f"{index}.{name}": grad for index, layer in enumerate(self.layers)
                for name, grad in layer.grads.items()}

    def zero_grad(self):
        for layer in self.layers:
            layer.zero_grad()

    def train(self, mode=True):
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self, as_torch=False):
        """{"{index}.{name}": copy}; ``as_torch=True`` gives tensors that a matching
        ``torch.nn.Sequential`` (or a module with the same names) loads."""
        state = {name: value.copy() for name, value in self.named_parameters()}
        if as_torch:
            import torch

            state = {name: torch.from_numpy(value) for name, value in state.items()}
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Load "{index}.{name}" entries into the layers; with ``strict`` the keys must match exactly."""
        own = dict(self.named_parameters())
        missing = [name for name in own if name not in state_dict]
        unexpected = [name for name in state_dict if name not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"Error(s) in loading state_dict for Sequential: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        for index, layer in enumerate(self.layers):
            prefix = f"{index}."
            entries = {name[len(prefix):]: value for name, value in state_dict.items()
                       if name.startswith(prefix) and name in own}
            if entries:
                layer.load_state_dict(entries, strict=False)


def _output(result):
    """The array a layer passes on: ``output`` of an ``(output, state)`` pair, else the result itself."""
    return result[0] if isinstance(result, tuple) else result

