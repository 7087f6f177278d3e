"""nblstm: a Numba-accelerated LSTM over NumPy arrays with PyTorch's nn.LSTM interface."""
from .api import LSTM, LSTMCell, freeze
from .tuning import PlanTiming, tune

__version__ = "0.1.0"
__all__ = ["LSTM", "LSTMCell", "PlanTiming", "__version__", "freeze", "tune"]
