"""The benchmark problems: one ``Case`` per LSTM size, named cases and presets.

Named cases live here once and feed the ``nblstm-bench`` command, the
pytest-benchmark regression suites under ``bench/`` and the tests.

FLOP count (``Case.flops``).  Only the matrix products are counted; the
element-wise gate arithmetic (a few dozen operations per hidden unit and step,
O(L*N*H)) is left out, as DeepBench and cuDNN do.  With L = seq_len,
N = batch, H = hidden_size, P = proj_size, H_out = P if P > 0 else H,
D = 2 if bidirectional else 1 and H_in(k) = input_size for layer 0 and
D * H_out above it, one forward pass costs

    sum over layers k and directions:  2 * L * N * 4H * (H_in(k) + H_out)   input and recurrent products
                                     + 2 * L * N * H * P                    projection (when P > 0)

multiply-adds counted as two FLOPs.  Training (forward, then backward to the
gradients of every parameter and of the input) is counted as 3x forward:
backward repeats each forward product twice, once for the gradient of its
input (data) and once for the gradient of its weight.
"""
import dataclasses
from dataclasses import dataclass

import numpy as np

from ..params import NUM_GATES, LSTMConfig, parameter_shapes

MODES = ("fwd", "train")
TRAIN_FLOPS_FACTOR = 3
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Case:
    """One LSTM problem: input (seq_len, batch, input_size), zero initial state.

    ``modes`` lists the modes the case is meant for (DeepBench's inference
    tables time the forward pass only); a sweep runs the requested modes that
    the case allows.
    """

    seq_len: int
    batch: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    dtype: str = "float32"
    modes: tuple = MODES

    def __post_init__(self):
        for name in ("seq_len", "batch", "input_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.proj_size < self.hidden_size:
            raise ValueError(f"proj_size must be in [0, hidden_size={self.hidden_size}), got {self.proj_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        unknown = set(self.modes) - set(MODES)
        if unknown or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes!r}")

    @property
    def label(self):
        """Short name of the size, e.g. ``L100 N64 I256 H256`` (plus ``x2`` layers, ``bi``, ``P64``)."""
        parts = [f"L{self.seq_len}", f"N{self.batch}", f"I{self.input_size}", f"H{self.hidden_size}"]
        if self.proj_size:
            parts.append(f"P{self.proj_size}")
        if self.num_layers > 1:
            parts.append(f"x{self.num_layers}")
        if self.bidirectional:
            parts.append("bi")
        return " ".join(parts)

    @property
    def config(self):
        """The ``nblstm.params.LSTMConfig`` of this case (time-major, no dropout)."""
        return LSTMConfig(self.input_size, self.hidden_size, self.num_layers, bias=True,
                          bidirectional=self.bidirectional, proj_size=self.proj_size)

    def lstm_kwargs(self):
        """Constructor arguments shared by ``nblstm.api.LSTM`` and ``torch.nn.LSTM``."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
                    bidirectional=self.bidirectional, proj_size=self.proj_size)

    def with_options(self, **changes):
        return dataclasses.replace(self, **changes)

    def flops(self, mode):
        """FLOPs of one call in ``mode`` ('fwd' or 'train'); see the module docstring."""
        config = self.config
        rows = self.seq_len * self.batch
        forward = 0
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else config.num_directions * config.state_size
            per_direction = 2 * rows * NUM_GATES * self.hidden_size * (layer_input + config.state_size)
            per_direction += 2 * rows * self.hidden_size * self.proj_size
            forward += config.num_directions * per_direction
        return forward * (TRAIN_FLOPS_FACTOR if mode == "train" else 1)

    def footprint_bytes(self, mode, dtype=None):
        """Rough memory of one model running this case: parameters (and gradients), input,
        layer outputs and, in training, the saved gates and states."""
        config = self.config
        n_params = sum(int(np.prod(shape)) for shape in parameter_shapes(**self.lstm_kwargs()).values())
        rows = self.seq_len * self.batch
        layer_outputs = self.num_layers * rows * config.num_directions * config.state_size
        elements = n_params + rows * self.input_size + layer_outputs
        if mode == "train":
            saved_per_direction = rows * (NUM_GATES + 2) * self.hidden_size
            elements += n_params + rows * self.input_size + layer_outputs
            elements += self.num_layers * config.num_directions * saved_per_direction
        return elements * np.dtype(dtype or self.dtype).itemsize


def _deepbench(hidden_sizes, batches, seq_len, modes):
    """DeepBench RNN rows: its tables give hidden units, batch and time steps, and its RNN
    benchmark feeds inputs as wide as the hidden state (input_size = hidden_size)."""
    return [Case(seq_len, batch, hidden, hidden, modes=modes) for hidden in hidden_sizes for batch in batches]


# The sizes of the design documents and the project brief.
SEEDS = (
    Case(10, 1, 20, 20),
    Case(100, 64, 256, 256),
    Case(1000, 8, 256, 256),
    Case(100, 64, 512, 1024),
)

# The LSTM rows of Baidu DeepBench's RNN kernel tables (code/kernels/rnn_problems.h):
# the training set (forward and forward+backward) and the server/device inference sets (forward only).
# Every row is listed; a sweep skips a case whose estimated footprint exceeds the free memory.
DEEPBENCH = tuple(
    _deepbench((512, 1024, 2048, 4096), (16, 32, 64, 128), 25, MODES)
    + _deepbench((1536,), (8, 16, 32), 50, MODES)
    + _deepbench((256,), (16, 32, 64), 150, MODES)
    + _deepbench((512, 1024, 2048), (1, 2, 4), 25, ("fwd",))
    + _deepbench((1536,), (1, 2, 4), 50, ("fwd",))
    + _deepbench((256,), (1, 2, 4), 150, ("fwd",))
)

QUICK = (
    Case(10, 1, 20, 20),
    Case(50, 16, 64, 128),
    Case(100, 64, 256, 256),
)

# Named cases for the regression benchmarks and the tests.
NAMED = {
    "toy": Case(10, 1, 20, 20),
    "small": Case(50, 16, 64, 128),
    "medium": Case(100, 64, 256, 256),
    "stacked-bi": Case(20, 8, 32, 64, num_layers=2, bidirectional=True),
    "short-stacked": Case(3, 8, 32, 512, num_layers=2),
    "short-batch4": Case(3, 4, 32, 512),
    "short-small": Case(3, 4, 32, 128),
    "long-batch1": Case(1000, 1, 1, 16),
    "tiny": Case(4, 2, 3, 5),
}


def _unique(cases):
    return tuple(dict.fromkeys(cases))


PRESETS = {
    "quick": QUICK,
    "seeds": SEEDS,
    "deepbench": DEEPBENCH,
    "full": _unique(QUICK + SEEDS + DEEPBENCH),
}

# Sizes a custom sweep takes for a dimension not given on the command line.
DEFAULT_CASE = Case(100, 64, 256, 256)


def sweep(seq_lens=(), batches=(), input_sizes=(), hidden_sizes=(), layers=(), proj_sizes=()):
    """The cartesian product of the given sizes; a dimension not given keeps DEFAULT_CASE's value."""
    d = DEFAULT_CASE
    return tuple(
        Case(seq_len, batch, input_size, hidden, num_layers, proj_size=proj)
        for seq_len in seq_lens or (d.seq_len,)
        for batch in batches or (d.batch,)
        for input_size in input_sizes or (d.input_size,)
        for hidden in hidden_sizes or (d.hidden_size,)
        for num_layers in layers or (d.num_layers,)
        for proj in proj_sizes or (d.proj_size,)
    )
