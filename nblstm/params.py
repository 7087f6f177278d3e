"""Weight layout shared by every part of nblstm: gate order, names, shapes, initialisation.

The layout is PyTorch's, so state dicts carry over unchanged:

* the four gates are stacked along the first axis of every weight and bias in
  the order input (i), forget (f), cell (g), output (o);
* layer ``k`` has ``weight_ih_l{k}`` of shape (4*hidden_size, layer_input_size),
  ``weight_hh_l{k}`` of shape (4*hidden_size, state_size),
  ``bias_ih_l{k}`` and ``bias_hh_l{k}`` of shape (4*hidden_size,), and with a
  projection ``weight_hr_l{k}`` of shape (proj_size, hidden_size);
* the reverse direction of a bidirectional layer adds the suffix ``_reverse``;
* ``state_size`` (PyTorch's "real hidden size") is proj_size when
  proj_size > 0, else hidden_size; the input of layer k > 0 is the output of
  layer k - 1, of size num_directions * state_size.
"""
import functools
from dataclasses import dataclass

import numpy as np

GATES = ("i", "f", "g", "o")
NUM_GATES = len(GATES)


@dataclass(frozen=True)
class LayerNames:
    """The parameter names of one (layer, direction); ``bias_*`` / ``weight_hr`` are None when absent."""

    weight_ih: str
    weight_hh: str
    bias_ih: str | None
    bias_hh: str | None
    weight_hr: str | None

    def present(self):
        """The names that exist, in PyTorch's flat order."""
        return [n for n in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.weight_hr) if n]


def state_size(hidden_size, proj_size):
    """Size of h (and of each direction's output features): proj_size if projecting, else hidden_size."""
    return proj_size if proj_size > 0 else hidden_size


@functools.lru_cache(maxsize=1024)
def layer_names(layer, direction, bias, proj_size, cell=False):
    """Parameter names of one (layer, direction); ``cell=True`` gives LSTMCell's unsuffixed names."""
    suffix = "" if cell else f"_l{layer}" + ("_reverse" if direction == 1 else "")
    return LayerNames(
        weight_ih=f"weight_ih{suffix}",
        weight_hh=f"weight_hh{suffix}",
        bias_ih=f"bias_ih{suffix}" if bias else None,
        bias_hh=f"bias_hh{suffix}" if bias else None,
        weight_hr=f"weight_hr{suffix}" if proj_size > 0 else None,
    )


def parameter_shapes(input_size, hidden_size, num_layers=1, bias=True, bidirectional=False,
                     proj_size=0, cell=False):
    """Ordered {name: shape} of every parameter, in PyTorch's flat-weight order."""
    num_directions = 2 if bidirectional else 1
    state = state_size(hidden_size, proj_size)
    gate_rows = NUM_GATES * hidden_size
    shapes = {}
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else state * num_directions
        for direction in range(num_directions):
            names = layer_names(layer, direction, bias, proj_size, cell)
            shapes[names.weight_ih] = (gate_rows, layer_input)
            shapes[names.weight_hh] = (gate_rows, state)
            if bias:
                shapes[names.bias_ih] = (gate_rows,)
                shapes[names.bias_hh] = (gate_rows,)
            if proj_size > 0:
                shapes[names.weight_hr] = (proj_size, hidden_size)
    return shapes


def init_parameters(shapes, hidden_size, dtype, rng):
    """PyTorch's initialisation: every parameter ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
    bound = 1.0 / np.sqrt(hidden_size)
    return {name: rng.uniform(-bound, bound, size=shape).astype(dtype) for name, shape in shapes.items()}


@dataclass(frozen=True)
class LSTMConfig:
    """The constructor arguments of an LSTM, as PyTorch names them."""

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0

    @functools.cached_property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @functools.cached_property
    def state_size(self):
        return state_size(self.hidden_size, self.proj_size)

    def state_shapes(self, batch):
        """Shapes of (h, c) for ``batch`` rows: (L*D, batch, state), (L*D, batch, hidden)."""
        layers = self.num_layers * self.num_directions
        return (layers, batch, self.state_size), (layers, batch, self.hidden_size)

    def names(self, layer, direction):
        return layer_names(layer, direction, self.bias, self.proj_size)

    def shapes(self):
        return parameter_shapes(self.input_size, self.hidden_size, self.num_layers, self.bias,
                                self.bidirectional, self.proj_size)
