"""nblstm.analysis.gradient_flow against torch autograd, and the tools/gradient_flow.py script."""
import pathlib
import runpy

import numpy as np
import pytest
from oracle import assert_close, numpy, tensor, torch

from nblstm import LSTM
from nblstm.analysis import gradient_flow

TOOL = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "tools" / "gradient_flow.py"))


def torch_step(x_t, h, c, w_ih, w_hh, bias):
    """One LSTM step written out in torch ops, so c_t is a tensor that h_t is computed from."""
    i, f, g, o = (x_t @ w_ih.T + h @ w_hh.T + bias).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def torch_state_grads(lstm, x, h0, c0, grad_output):
    """(grad_h, grad_c) of shape (num_layers, L + 1, N, H) from torch autograd with retain_grad per step."""
    params = lstm.state_dict(as_torch=True)
    states = []  # states[layer] = [(h_t, c_t) for t = 0..L]
    layer_input = [tensor(x_t) for x_t in x]
    for layer in range(lstm.config.num_layers):
        weights = [params[f"weight_ih_l{layer}"], params[f"weight_hh_l{layer}"],
                   params[f"bias_ih_l{layer}"] + params[f"bias_hh_l{layer}"] if lstm.config.bias else 0.0]
        state = (tensor(h0[layer], requires_grad=True), tensor(c0[layer], requires_grad=True))
        states.append([state])
        for x_t in layer_input:
            state = torch_step(x_t, *state, *weights)
            state[0].retain_grad(), state[1].retain_grad()
            states[-1].append(state)
        layer_input = [h for h, _ in states[-1][1:]]
    (states[-1][-1][0] * tensor(grad_output)).sum().backward()
    return tuple(np.array([[numpy(state[which].grad) for state in layer_states] for layer_states in states])
                 for which in (0, 1))


@pytest.mark.parametrize("options", [dict(num_layers=1), dict(num_layers=3), dict(num_layers=2, bias=False)],
                         ids=["1-layer", "3-layer", "2-layer-no-bias"])
def test_gradient_flow_matches_torch_autograd(options, rng):
    lstm = LSTM(3, 6, dtype="float64", seed=7, **options)
    layers = lstm.config.num_layers
    x = rng.standard_normal((9, 4, 3))
    h0, c0 = rng.standard_normal((layers, 4, 6)), rng.standard_normal((layers, 4, 6))
    grad_output = rng.standard_normal((4, 6))
    flow = gradient_flow(lstm, x, (h0, c0), grad_output)
    grad_h, grad_c = torch_state_grads(lstm, x, h0, c0, grad_output)
    assert flow.grad_h.shape == flow.grad_c.shape == (layers, 10, 4, 6)
    assert_close(flow.grad_h, grad_h, np.float64, grad=True, what="grad_h")
    assert_close(flow.grad_c, grad_c, np.float64, grad=True, what="grad_c")
    np.testing.assert_allclose(flow.h_norm, np.sqrt((grad_h ** 2).sum(axis=(2, 3))), rtol=1e-9)
    assert flow.c_norm.shape == (layers, 10)


def test_gradient_flow_agrees_with_lstm_backward(rng):
    """The first step's gradients are what LSTM.backward returns for the initial state."""
    lstm = LSTM(3, 5, num_layers=2, batch_first=True, dtype="float64", seed=1)
    x = rng.standard_normal((2, 8, 3))
    output, _ = lstm.train()(x)
    grad_output = np.zeros_like(output)
    grad_output[:, -1] = 1.0
    _, (grad_h0, grad_c0) = lstm.backward(grad_output)
    flow = gradient_flow(lstm, x)
    assert_close(flow.grad_h[:, 0], grad_h0, np.float64, grad=True)
    assert_close(flow.grad_c[:, 0], grad_c0, np.float64, grad=True)


def test_gradient_flow_unbatched_and_errors(rng):
    lstm = LSTM(2, 3, dtype="float64", seed=0)
    x = rng.standard_normal((5, 2))
    flow = gradient_flow(lstm, x, grad_output=np.ones(3))
    np.testing.assert_array_equal(flow.grad_h, gradient_flow(lstm, x[:, None]).grad_h)
    with pytest.raises(ValueError, match="unidirectional"):
        gradient_flow(LSTM(2, 3, bidirectional=True), x)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        gradient_flow(lstm, x, grad_output=np.ones(4))


def test_forget_bias_keeps_gradient_alive(tmp_path):
    """The tool's claim: an open forget gate (+3) carries gradient far back, a closed one (-3) does not."""
    out = tmp_path / "flow.png"
    flows = TOOL["main"](["--seq-len", "30", "--batch", "2", "--hidden-size", "8", "--num-layers", "2",
                          "--out", str(out)])
    assert out.stat().st_size > 10_000
    open_gate, closed_gate = flows[3.0], flows[-3.0]
    # 30 steps back from the last cell state: the open gate keeps a sizeable fraction,
    # the closed one (f ~ 0.05 per step) almost nothing
    assert open_gate.c_norm[-1, 0] > 0.1 * open_gate.c_norm[-1, -1]
    assert closed_gate.c_norm[-1, 0] < 1e-20 * closed_gate.c_norm[-1, -1]
    assert closed_gate.h_norm[-1, 0] < 1e-20 < open_gate.h_norm[-1, 0]
