"""PyTorch as the test oracle: the same model in torch.nn, run on the same arrays."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

TOLERANCE = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}
GRAD_TOLERANCE = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-9, atol=1e-9)}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def torch_twin(model):
    """A torch.nn.LSTM / LSTMCell with the configuration and weights of an nblstm model."""
    dtype = TORCH_DTYPE[model.dtype.type]
    c = model.config
    if type(model).__name__ == "LSTMCell":
        twin = torch.nn.LSTMCell(c.input_size, c.hidden_size, bias=c.bias, dtype=dtype)
    else:
        twin = torch.nn.LSTM(c.input_size, c.hidden_size, num_layers=c.num_layers, bias=c.bias,
                             batch_first=c.batch_first, dropout=c.dropout, bidirectional=c.bidirectional,
                             proj_size=c.proj_size, dtype=dtype)
    twin.load_state_dict(model.state_dict(as_torch=True))
    twin.train(model.training)
    return twin


def tensor(array, requires_grad=False):
    return torch.tensor(np.asarray(array), requires_grad=requires_grad)


def numpy(value):
    return value.detach().numpy()


def assert_close(actual, expected, dtype, grad=False, what=""):
    tolerance = (GRAD_TOLERANCE if grad else TOLERANCE)[np.dtype(dtype).type]
    np.testing.assert_allclose(actual, expected, err_msg=what, **tolerance)
