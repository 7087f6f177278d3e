"""The CUDA path against the CPU engine and PyTorch: outputs, states and every gradient.

Each configuration runs with both recurrence designs (persistent and per-step
launches); sizes are tiny and the thread blocks shrunk (see conftest.py) so
that every kernel still runs several blocks.
"""
import numpy as np
import pytest
from cuda_helpers import RESULT_NAMES, force_recurrence, forward_backward, host
from oracle import assert_close, numpy, tensor, torch, torch_twin

from nblstm import cuda_backend, engine
from nblstm.api import LSTM, LSTMCell
from nblstm.kernels import cuda_backward, cuda_forward
from nblstm.params import NUM_GATES, LSTMConfig

SEQ_LEN, BATCH, INPUT, HIDDEN = 3, 3, 3, 5

# Every option of the CPU engine appears, with both dtypes and both layer counts.
MATRIX = [
    (dict(), np.float32, True),
    (dict(bias=False, batch_first=True), np.float64, True),
    (dict(bidirectional=True), np.float64, True),
    (dict(proj_size=2, batch_first=True), np.float32, True),
    (dict(num_layers=2, bidirectional=True, proj_size=2), np.float64, True),
    (dict(num_layers=2, bias=False), np.float32, True),
    (dict(num_layers=2, bidirectional=True), np.float32, False),
]


def _case_id(case):
    options, dtype, batched = case
    return "-".join([f"{k}={v}" for k, v in options.items()] + [dtype.__name__, "batched" if batched else "unbatched"])


def _inputs(model, rng, batched):
    """x, hx, grad_output, grad_state for ``model`` in its own input layout."""
    c, dtype = model.config, model.dtype
    layers = c.num_layers * c.num_directions
    batch = (BATCH,) if batched else ()
    x_shape = ((BATCH, SEQ_LEN) if c.batch_first else (SEQ_LEN, BATCH)) if batched else (SEQ_LEN,)
    out_features = c.num_directions * c.state_size

    def draw(*shape):
        return rng.standard_normal(shape).astype(dtype)

    hx = (draw(layers, *batch, c.state_size), draw(layers, *batch, c.hidden_size))
    grad_state = (draw(layers, *batch, c.state_size), draw(layers, *batch, c.hidden_size))
    return draw(*x_shape, INPUT), hx, draw(*x_shape, out_features), grad_state


def torch_forward_backward(model, x, hx, grad_output, grad_state):
    """The results of ``forward_backward`` from torch.nn with the model's weights."""
    twin = torch_twin(model)
    t_x = tensor(x, requires_grad=True)
    t_hx = tuple(tensor(s, requires_grad=True) for s in hx)
    output, (h_n, c_n) = twin(t_x, t_hx)
    torch.autograd.backward([output, h_n, c_n], [tensor(grad_output)] + [tensor(g) for g in grad_state])
    results = tuple(numpy(v) for v in (output, h_n, c_n, t_x.grad, t_hx[0].grad, t_hx[1].grad))
    return results, {name: numpy(p.grad) for name, p in twin.named_parameters()}


def assert_same_results(ours, theirs, dtype, what):
    (results, grads), (expected, expected_grads) = ours, theirs
    for name, a, b in zip(RESULT_NAMES, results, expected):
        assert a.shape == b.shape, f"{what}: {name}"
        assert_close(a, b, dtype, grad=name.startswith("grad"), what=f"{what}: {name}")
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        assert_close(grads[name], expected_grads[name], dtype, grad=True, what=f"{what}: {name}")


@pytest.mark.parametrize("case", MATRIX, ids=_case_id)
def test_lstm_matches_cpu_and_torch(case, recurrence, rng):
    _check_against_cpu_and_torch(case, rng)


@pytest.mark.parametrize("lanes", [2, 4])
@pytest.mark.parametrize("case", [MATRIX[0], MATRIX[4]], ids=_case_id)
def test_persistent_dot_products_shared_between_threads(case, lanes, monkeypatch, rng):
    """Groups of threads sharing each dot product of the persistent kernels (``group_lanes`` > 1, as
    for small batches on a GPU; the tests' blocks of 4 threads and batch 3 would give 1)."""
    force_recurrence(monkeypatch, "persistent")
    for module in (cuda_forward, cuda_backward):
        monkeypatch.setattr(module, "group_lanes", lambda threads, items, terms: lanes)
    _check_against_cpu_and_torch(case, rng)


def _check_against_cpu_and_torch(case, rng):
    options, dtype, batched = case
    gpu = LSTM(INPUT, HIDDEN, dtype=dtype, seed=3, device="cuda", **options)
    cpu = LSTM(INPUT, HIDDEN, dtype=dtype, seed=3, **options)
    inputs = _inputs(cpu, rng, batched)
    ours = forward_backward(gpu, *inputs)
    assert_same_results(ours, torch_forward_backward(gpu, *inputs), dtype, "torch")
    assert_same_results(ours, forward_backward(cpu, *inputs), dtype, "cpu engine")


def test_gradients_overwrite_after_zero_grad_and_accumulate_after_that(recurrence, rng):
    """After zero_grad() the next backward overwrites the device gradients (NaN before must not show
    through); a second backward adds to them."""
    options = dict(num_layers=2, bidirectional=True, proj_size=2)
    gpu = LSTM(INPUT, HIDDEN, dtype=np.float64, seed=6, device="cuda", **options)
    cpu = LSTM(INPUT, HIDDEN, dtype=np.float64, seed=6, **options)
    for grad in gpu.grads.values():
        grad[:] = np.nan
    inputs = _inputs(cpu, rng, batched=True)
    once = forward_backward(gpu, *inputs)  # zero_grad() first
    assert_same_results(once, forward_backward(cpu, *inputs), np.float64, "after zero_grad")
    x, hx, grad_output, grad_state = inputs
    gpu(x, hx)
    gpu.backward(grad_output, grad_state)
    for name, grad in gpu.grads.items():
        assert_close(host(grad), 2 * once[1][name], np.float64, grad=True, what=name)


def test_dropout_matches_cpu_with_the_same_seed(recurrence, rng):
    """The CUDA backend draws its dropout masks from the model's host generator, as the CPU does."""
    options = dict(num_layers=2, dropout=0.5)
    gpu = LSTM(INPUT, HIDDEN, seed=11, device="cuda", **options)
    cpu = LSTM(INPUT, HIDDEN, seed=11, **options)
    inputs = _inputs(cpu, rng, batched=True)
    assert_same_results(forward_backward(gpu, *inputs), forward_backward(cpu, *inputs), np.float32, "dropout")


def test_inference_blocks_match_cpu(recurrence, monkeypatch, rng):
    """Eval mode projects the input in blocks of time steps that need not divide seq_len."""
    # two steps of a batch of two: gate rows of 4 * HIDDEN float64 values
    monkeypatch.setattr(cuda_backend, "INFERENCE_BLOCK_BYTES", 2 * 2 * NUM_GATES * HIDDEN * 8)
    assert cuda_backend.CUDA.inference_block_rows(NUM_GATES * HIDDEN, np.float64) == 2 * 2
    options = dict(bidirectional=True, proj_size=2)
    gpu = LSTM(INPUT, HIDDEN, dtype=np.float64, seed=5, device="cuda", **options).eval()
    cpu = LSTM(INPUT, HIDDEN, dtype=np.float64, seed=5, **options).eval()
    x = rng.standard_normal((5, 2, INPUT))
    output, (h_n, c_n) = gpu(x)
    expected, (e_h, e_c) = cpu(x)
    for a, b in ((output, expected), (h_n, e_h), (c_n, e_c)):
        assert_close(a, b, np.float64)


@pytest.mark.parametrize(("hidden", "dtype", "block_steps"), [(128, np.float32, 100), (1024, np.float32, 64),
                                                            (1024, np.float64, 32)])
def test_inference_blocks_hold_64_mib_of_gates(hidden, dtype, block_steps):
    """Each block of steps costs the host two launches: the GPU projects whole sequences of batch 64
    and seq_len 100 at once up to 64 MiB of gates (the CPU takes 512 (time, batch) rows)."""
    config = LSTMConfig(INPUT, hidden)
    plan = cuda_backend.CUDA.plan(100, 64, hidden, hidden, training=False)
    assert engine.layout(cuda_backend.CUDA, config, 100, 64, dtype, plan, training=False).gates == (
        block_steps, 64, NUM_GATES * hidden)


@pytest.mark.parametrize("bias", [True, False])
def test_cell_steps_match_cpu(bias, recurrence, rng):
    """LSTMCell stepped twice, then backpropagated through both steps."""
    gpu = LSTMCell(INPUT, HIDDEN, bias=bias, dtype=np.float64, seed=2, device="cuda")
    cpu = LSTMCell(INPUT, HIDDEN, bias=bias, dtype=np.float64, seed=2)
    x = rng.standard_normal((2, BATCH, INPUT))
    h0, c0, grad_h, grad_c = rng.standard_normal((4, BATCH, HIDDEN))
    results = {}
    for name, cell in (("gpu", gpu), ("cpu", cpu)):
        h1, c1 = cell(x[0], (h0, c0))
        h2, c2 = cell(x[1], (h1, c1))
        d_x1, (d_h1, d_c1) = cell.backward(grad_h, grad_c)
        d_x0, (d_h0, d_c0) = cell.backward(d_h1, d_c1)
        results[name] = [h1, c1, h2, c2, d_x1, d_x0, d_h0, d_c0]
        results[name + " grads"] = [host(cell.grads[k]) for k in sorted(cell.grads)]
    for a, b in zip(results["gpu"], results["cpu"]):
        assert isinstance(a, np.ndarray)  # host data in, host data out
        assert_close(a, b, np.float64, grad=True)
    for a, b in zip(results["gpu grads"], results["cpu grads"]):
        assert_close(a, b, np.float64, grad=True)
