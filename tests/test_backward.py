"""Backward parity: every gradient of nblstm's BPTT against torch autograd, finite differences and the reference."""
import warnings

import numpy as np
import pytest
from oracle import assert_close, numpy, tensor, torch_twin
from test_forward import MATRIX, ODD_SIZES, _case_id, _random_state

from nblstm import module, reference
from nblstm.api import LSTM, LSTMCell
from nblstm.train import Linear

DTYPES = [np.float32, np.float64]


def torch_gradients(model, x, hx, grad_output, grad_h_n, grad_c_n):
    """grad_x, grad_h0, grad_c0 and {name: grad} from torch autograd with the same weights."""
    twin = torch_twin(model)
    t_x = tensor(x, requires_grad=True)
    t_h0, t_c0 = tensor(hx[0], requires_grad=True), tensor(hx[1], requires_grad=True)
    out, (h_n, c_n) = twin(t_x, (t_h0, t_c0))
    loss = (out * tensor(grad_output)).sum() + (h_n * tensor(grad_h_n)).sum() + (c_n * tensor(grad_c_n)).sum()
    loss.backward()
    return numpy(t_x.grad), numpy(t_h0.grad), numpy(t_c0.grad), {n: numpy(p.grad) for n, p in twin.named_parameters()}


def upstream(model, output, h_n, c_n, rng):
    return tuple(rng.standard_normal(a.shape).astype(model.dtype) for a in (output, h_n, c_n))


def check_against_torch(model, x, hx, rng):
    output, (h_n, c_n) = model(x, hx)
    grad_output, grad_h_n, grad_c_n = upstream(model, output, h_n, c_n, rng)
    grad_x, (grad_h0, grad_c0) = model.backward(grad_output, (grad_h_n, grad_c_n))
    expected = torch_gradients(model, x, hx, grad_output, grad_h_n, grad_c_n)
    dtype = model.dtype
    for name, ours, theirs in zip(("input", "h0", "c0"), (grad_x, grad_h0, grad_c0), expected[:3]):
        assert ours.shape == theirs.shape, name
        assert_close(ours, theirs, dtype, grad=True, what=name)
    assert set(model.grads) == set(expected[3])
    for name, theirs in expected[3].items():
        assert_close(model.grads[name], theirs, dtype, grad=True, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MATRIX, ids=_case_id)
def test_gradients_match_torch(case, dtype, rng):
    case = dict(case)
    case.pop("with_state")
    model = LSTM(7, 13, dtype=dtype, seed=3, **case)
    seq_len, batch = 11, 5
    shape = (batch, seq_len, 7) if case["batch_first"] else (seq_len, batch, 7)
    x = rng.standard_normal(shape).astype(dtype)
    check_against_torch(model, x, _random_state(model, batch, rng), rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", [dict(bidirectional=True, num_layers=2), dict(proj_size=40)], ids=["bi-2-layers", "proj"])
def test_long_calls_on_packed_gradient_products_match_torch(extra, dtype, rng):
    """From PACKED_GRADIENT_MIN_ROWS (time, batch) rows on AVX-512 the weight gradients and dx run over
    packed blocks (``add_weight_gradients``, ``add_input_gradient``): 640 rows in 3 blocks, hidden 70
    (not whole vectors), 130 inputs (whole panels and the columns past them), both directions,
    a second layer reading the first's outputs, a projection; PyTorch's gradients."""
    from nblstm.kernels.cpu_backward import PACKED_GRADIENT_MIN_ROWS

    seq_len, batch = 40, 16
    assert seq_len * batch >= PACKED_GRADIENT_MIN_ROWS
    model = LSTM(130, 70, dtype=dtype, seed=6, **extra)
    x = rng.standard_normal((seq_len, batch, 130)).astype(dtype)
    check_against_torch(model, x, _random_state(model, batch, rng), rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", ODD_SIZES, ids=lambda s: "x".join(map(str, s[:4])) + str(s[4] or ""))
def test_odd_size_gradients_match_torch(sizes, dtype, rng):
    seq_len, batch, input_size, hidden, extra = sizes
    model = LSTM(input_size, hidden, dtype=dtype, seed=5, **extra)
    x = rng.standard_normal((seq_len, batch, input_size)).astype(dtype)
    check_against_torch(model, x, _random_state(model, batch, rng), rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_gradients_match_torch(dtype, rng):
    model = LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=2, dtype=dtype, seed=1)
    x = rng.standard_normal((9, 4)).astype(dtype)
    check_against_torch(model, x, _random_state(model, None, rng, batched=False), rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_cell_gradients_match_torch(bias, dtype, rng):
    cell = LSTMCell(5, 7, bias=bias, dtype=dtype, seed=4)
    twin = torch_twin(cell)
    x, h, c = (rng.standard_normal((3, n)).astype(dtype) for n in (5, 7, 7))
    h1, c1 = cell(x, (h, c))
    grad_h, grad_c = rng.standard_normal(h1.shape).astype(dtype), rng.standard_normal(c1.shape).astype(dtype)
    grad_x, (grad_h0, grad_c0) = cell.backward(grad_h, grad_c)
    t_x, t_h, t_c = (tensor(a, requires_grad=True) for a in (x, h, c))
    t_h1, t_c1 = twin(t_x, (t_h, t_c))
    ((t_h1 * tensor(grad_h)).sum() + (t_c1 * tensor(grad_c)).sum()).backward()
    for ours, theirs in ((grad_x, t_x), (grad_h0, t_h), (grad_c0, t_c)):
        assert_close(ours, numpy(theirs.grad), dtype, grad=True)
    for name, parameter in twin.named_parameters():
        assert_close(cell.grads[name], numpy(parameter.grad), dtype, grad=True, what=name)


def test_cell_bptt_by_hand_equals_lstm_backward(rng):
    """Stepping LSTMCell forward, then backward in reverse order, is BPTT of the whole LSTM."""
    lstm = LSTM(3, 4, dtype="float64", seed=0)
    cell = LSTMCell(3, 4, dtype="float64")
    cell.load_state_dict({name[:-3]: value for name, value in lstm.state_dict().items()})
    x = rng.standard_normal((6, 2, 3))
    output, _ = lstm(x)
    grad_output = rng.standard_normal(output.shape)
    grad_x, (grad_h0, grad_c0) = lstm.backward(grad_output)
    h = c = np.zeros((2, 4))
    for t in range(6):
        h, c = cell(x[t], (h, c))
    grad_h, grad_c = np.zeros((2, 4)), np.zeros((2, 4))
    for t in reversed(range(6)):
        grad_x_t, (grad_h, grad_c) = cell.backward(grad_output[t] + grad_h, grad_c)
        np.testing.assert_allclose(grad_x_t, grad_x[t], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_h, grad_h0[0], rtol=1e-12, atol=1e-12)
    for name, grad in cell.grads.items():
        np.testing.assert_allclose(grad, lstm.grads[name + "_l0"], rtol=1e-12, atol=1e-12)


def _loss_and_gradients(model, x, hx, weights):
    """L = sum(output * w_out) + sum(h_n * w_h) + sum(c_n * w_c), and its analytic gradients."""
    output, (h_n, c_n) = model(x, hx)
    loss = sum(float((a * w).sum()) for a, w in zip((output, h_n, c_n), weights))
    return loss, output, h_n, c_n


@pytest.mark.parametrize("extra", [dict(), dict(num_layers=2, bidirectional=True, proj_size=2, bias=False),
                                   dict(num_layers=2, batch_first=True)], ids=["plain", "deep-proj", "batch-first"])
def test_finite_differences_float64(extra, rng):
    """Central differences of a scalar loss agree with backward for inputs, states and every parameter."""
    model = LSTM(3, 5, dtype="float64", seed=7, **extra)
    x = rng.standard_normal((3, 4, 3))  # (seq_len, batch) = (3, 4), or (4, 3) batch-first
    hx = _random_state(model, 3 if model.batch_first else 4, rng)
    output, (h_n, c_n) = model(x, hx)
    weights = upstream(model, output, h_n, c_n, rng)
    grad_x, (grad_h0, grad_c0) = model.backward(*weights[:1], weights[1:])
    model.eval()
    step = 1e-6

    def numeric(array, index):
        saved = array[index]
        array[index] = saved + step
        plus = _loss_and_gradients(model, x, hx, weights)[0]
        array[index] = saved - step
        minus = _loss_and_gradients(model, x, hx, weights)[0]
        array[index] = saved
        return (plus - minus) / (2 * step)

    targets = [("input", x, grad_x), ("h0", hx[0], grad_h0), ("c0", hx[1], grad_c0)]
    targets += [(name, value, model.grads[name]) for name, value in model.named_parameters()]
    for name, array, analytic in targets:
        for flat in rng.choice(array.size, size=min(4, array.size), replace=False):
            index = np.unravel_index(flat, array.shape)
            np.testing.assert_allclose(numeric(array, index), analytic[index], rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_masks_match_reference(dtype, rng):
    """In training, dropout between layers is inverted dropout; forward and backward equal the
    reference run with the same masks."""
    model = LSTM(4, 6, num_layers=3, dropout=0.4, bidirectional=True, dtype=dtype, seed=11)
    x = rng.standard_normal((7, 5, 4)).astype(dtype)
    output, (h_n, c_n) = model(x)
    masks = model._tapes[-1].dropout_masks
    assert len(masks) == 2
    for mask in masks:
        assert set(np.unique(mask)) <= {0, dtype(1 / 0.6)}
    params = model.state_dict()
    zeros = [np.zeros(s.shape, dtype) for s in (h_n, c_n)]
    ref_out, ref_h, ref_c, tape = reference.lstm_forward(params, model.config, x, *zeros, dropout_masks=masks)
    assert_close(output, ref_out, dtype)
    grad_output = rng.standard_normal(output.shape).astype(dtype)
    grad_x, _ = model.backward(grad_output)
    ref_grad_x, _, _, ref_grads = reference.lstm_backward(params, model.config, tape, *zeros, grad_output,
                                                          dropout_masks=masks)
    assert_close(grad_x, ref_grad_x, dtype, grad=True)
    for name, grad in ref_grads.items():
        assert_close(model.grads[name], grad, dtype, grad=True, what=name)


def test_dropout_statistics_and_seeding(rng):
    x = rng.standard_normal((50, 40, 8)).astype(np.float32)
    first = LSTM(8, 16, num_layers=2, dropout=0.5, seed=3)
    second = LSTM(8, 16, num_layers=2, dropout=0.5, seed=3)
    np.testing.assert_array_equal(first(x)[0], second(x)[0])  # seeded: reproducible
    mask = first._tapes[-1].dropout_masks[0]
    assert abs((mask == 0).mean() - 0.5) < 0.02
    np.testing.assert_array_equal(first.eval()(x)[0], second.eval()(x)[0])
    # eval mode: no dropout, same as PyTorch in eval
    twin = torch_twin(first)
    assert_close(first(x)[0], numpy(twin(tensor(x))[0]), np.float32)
    assert not np.array_equal(first.train()(x)[0], first.eval()(x)[0])


def test_dropout_one_zeroes_the_upper_layer_input(rng):
    model = LSTM(3, 4, num_layers=2, dropout=1.0, seed=0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    out_x = model(x)[0]
    out_zero = model(np.zeros_like(x))[0]  # layer 1 sees zeros either way
    np.testing.assert_allclose(out_x, out_zero, atol=1e-7)


def test_truncated_bptt_stops_at_chunk_start(rng):
    """The final state of one chunk seeds the next; backward on a chunk ends at its start (like
    detaching the state in PyTorch)."""
    model = LSTM(3, 5, num_layers=2, dtype="float64", seed=2)
    twin = torch_twin(model)
    x = rng.standard_normal((10, 2, 3))
    state, t_state = None, None
    for chunk in (x[:6], x[6:]):
        model.zero_grad()
        twin.zero_grad()
        output, state = model(chunk, state)
        grad_output = rng.standard_normal(output.shape)
        grad_x, _ = model.backward(grad_output)
        t_x = tensor(chunk, requires_grad=True)
        t_out, t_state = twin(t_x, None if t_state is None else tuple(s.detach() for s in t_state))
        (t_out * tensor(grad_output)).sum().backward()
        np.testing.assert_allclose(grad_x, numpy(t_x.grad), rtol=1e-9, atol=1e-9)
        for name, parameter in twin.named_parameters():
            np.testing.assert_allclose(model.grads[name], numpy(parameter.grad), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("infinite_upstream", [False, True])
def test_gradients_from_zero_state_match_torch(infinite_upstream, rng):
    """Without hx the initial state is zero and its pass over dw_hh adds nothing, so it is skipped,
    unless the first step's gate gradients are not finite: 0 * inf is NaN, in torch too."""
    model = LSTM(5, 8, num_layers=2, dtype="float64", seed=2)
    x = rng.standard_normal((3, 4, 5))
    output, _ = model(x)
    grad_output = rng.standard_normal(output.shape)
    if infinite_upstream:
        grad_output[0, 1, 2] = np.inf
    model.backward(grad_output)
    zeros = np.zeros((2, 4, 8))
    expected = torch_gradients(model, x, (zeros, zeros), grad_output, zeros, zeros)[3]
    assert np.isnan(expected["weight_hh_l0"]).any() == infinite_upstream
    for name, theirs in expected.items():
        assert_close(model.grads[name], theirs, np.float64, grad=True, what=name)


def test_gradients_accumulate_until_zero_grad(rng):
    model = LSTM(3, 4, dtype="float64", seed=0)
    x = rng.standard_normal((5, 2, 3))
    grad_output = rng.standard_normal((5, 2, 4))
    model(x)
    model.backward(grad_output)
    once = {name: grad.copy() for name, grad in model.grads.items()}
    model(x)
    model.backward(grad_output)
    for name, grad in model.grads.items():
        np.testing.assert_allclose(grad, 2 * once[name], rtol=1e-12)
    model.zero_grad()
    assert all(not grad.any() for grad in model.grads.values())
    model(x)
    model.backward(grad_output)  # onto the zeros written when grads was read
    for name, grad in model.grads.items():
        np.testing.assert_allclose(grad, once[name], rtol=1e-12)


@pytest.mark.parametrize("cell", [False, True], ids=["LSTM", "LSTMCell"])
def test_left_out_upstream_gradients_read_as_zeros_call_after_call(cell, rng):
    """backward without grad_state (LSTMCell: without grad_c, and no output gradient) reads zero
    arrays the model keeps from call to call: every call must match explicit zeros, so nothing
    may have written into them."""
    model = (LSTMCell if cell else LSTM)(3, 4, dtype="float64", seed=2)
    twin = (LSTMCell if cell else LSTM)(3, 4, dtype="float64", seed=2)
    x = rng.standard_normal((2, 3) if cell else (3, 2, 3))
    for _ in range(3):
        grad = rng.standard_normal((2, 4) if cell else (3, 2, 4))
        results = []
        for net, explicit in ((model, False), (twin, True)):
            net.zero_grad()
            net(x)
            if cell:
                grad_x, (grad_h, grad_c) = net.backward(grad, np.zeros((2, 4)) if explicit else None)
            else:
                grad_x, (grad_h, grad_c) = net.backward(grad, (np.zeros((1, 2, 4)),) * 2 if explicit else None)
            results.append((grad_x, grad_h, grad_c, *net.grads.values()))
        for ours, expected in zip(*results):
            np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [
    (1, 3, 5, 13, {}),  # one step from a zero state: no pass over dw_hh at all
    (6, 4, 7, 13, {"num_layers": 2, "bidirectional": True, "proj_size": 5}),
    (5, 2, 6, 10, {"bias": False}),
    (4, 8, 260, 520, {}),  # two threads, packed weights
], ids=lambda s: "x".join(map(str, s[:4])) + "".join(s[4]))
def test_backward_after_zero_grad_overwrites_old_gradients(sizes, dtype, rng):
    """zero_grad() leaves the zeros to the next backward, which overwrites the gradients: whatever
    they held before (NaN here) must not show through, in any layer, direction or parameter."""
    seq_len, batch, input_size, hidden, extra = sizes
    model = LSTM(input_size, hidden, dtype=dtype, seed=4, **extra)
    for grad in model.grads.values():
        grad[...] = np.nan
    model.zero_grad()
    x = rng.standard_normal((seq_len, batch, input_size)).astype(dtype)
    zeros = tuple(np.zeros_like(state) for state in _random_state(model, batch, rng))
    check_against_torch(model, x, zeros if seq_len == 1 else _random_state(model, batch, rng), rng)
    if seq_len == 1:
        assert not model.grads["weight_hh_l0"].any()


def test_backward_needs_a_training_forward(rng):
    model = LSTM(3, 4, seed=0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    with pytest.raises(RuntimeError, match="training mode"):
        model.backward(np.ones((5, 2, 4), np.float32))
    model.eval()
    model(x)
    with pytest.raises(RuntimeError, match="training mode"):
        model.backward(np.ones((5, 2, 4), np.float32))
    model.train()
    model(x)
    with pytest.raises(ValueError, match=r"grad_output must have the shape of the forward result \(5, 2, 4\)"):
        model.backward(np.ones((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match="grad_h_n"):
        model.backward(np.ones((5, 2, 4), np.float32), (np.ones((2, 2, 4), np.float32), None))
    model.backward(np.ones((5, 2, 4), np.float32))  # the failed calls kept the forward
    with pytest.raises(RuntimeError, match="once"):
        model.backward(np.ones((5, 2, 4), np.float32))


def test_eval_forward_keeps_nothing_for_backward(rng):
    model = LSTM(3, 4, seed=0).eval()
    for _ in range(3):
        model(rng.standard_normal((50, 2, 3)).astype(np.float32))
    assert model._tapes == []


@pytest.mark.parametrize("make", [lambda: LSTM(3, 4, seed=0), lambda: LSTMCell(3, 4, seed=0), lambda: Linear(3, 4)],
                         ids=["LSTM", "LSTMCell", "Linear"])
def test_training_forwards_waiting_for_backward_warn_past_the_limit(make, monkeypatch, rng):
    """Training-mode forwards never backpropagated (inference without eval()) keep what backward needs:
    the model warns once they hold PENDING_WARNING_BYTES, looked at for 2, 4, 8, ... of them."""
    model = make()
    x = rng.standard_normal((50, 2, 3) if isinstance(model, LSTM) else (2, 3)).astype(np.float32)
    grad = np.ones((50, 2, 4) if isinstance(model, LSTM) else (2, 4), np.float32)
    model(x)
    one = model._tapes[0].nbytes
    assert one >= x.nbytes + (50 * 2 * 4 * 4 * 4 if isinstance(model, LSTM) else 0)  # x and the gates
    monkeypatch.setattr(module, "PENDING_WARNING_BYTES", 3 * one)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            model(x)  # 2 and 3 kept: under the limit, and 3 is not looked at
        model.eval()(x)
    with pytest.warns(RuntimeWarning, match=r"4 training-mode forwards wait for backward, holding about .* call "
                                            r"\.eval\(\) first"):
        model.train()(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            model(x)  # 8 kept: the limit was passed before
    for _ in range(8):
        model.backward(grad)
    assert model._tapes == []
    monkeypatch.setattr(module, "PENDING_WARNING_BYTES", one // 2)  # each forward alone holds more
    model(x)
    with pytest.warns(RuntimeWarning, match="2 training-mode forwards"):
        model(x)
    for _ in range(2):
        model.backward(grad)
    with pytest.raises(RuntimeError, match="needs a forward pass in training mode"):
        model.backward(grad)



@pytest.mark.parametrize("plan", [(2, True, False, True), (2, True, True, True)], ids=["units", "batch-split"])
def test_a_region_whose_threads_cannot_meet_falls_back_with_packed_weights(plan, monkeypatch, rng):
    """Threads that can meet at a barrier pack the weights in their region, forward and backward;
    when they cannot start together (here one thread runs both parts), the fallback packs them.
    Threads that split the batch need no meeting (each packs its own copy): one thread running
    both parts gives the same numbers."""
    import numba

    from nblstm import engine

    monkeypatch.setattr(engine.CPUBackend, "plan", staticmethod(lambda *args: plan))
    model = LSTM(5, 40, dtype="float64", seed=3)
    x = rng.standard_normal((6, 9, 5))
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        check_against_torch(model, x, _random_state(model, 9, rng), rng)
        model.eval()
        assert_close(model(x)[0], numpy(torch_twin(model)(tensor(x))[0]), np.float64)
    finally:
        numba.set_num_threads(previous)


@pytest.mark.parametrize("plan", [(2, False, True, True), (2, True, True, True), (2, True, False, True),
                                  (2, False, False, True)],
                         ids=["batch-split", "batch-split-packing-together", "units-one-region",
                              "units-region-per-step"])
@pytest.mark.parametrize("extra", [dict(bidirectional=True), dict(proj_size=40, num_layers=2),
                                   dict(bidirectional=True, num_layers=2)], ids=["bi", "proj", "bi-2-layers"])
def test_thread_splits_match_torch(plan, extra, monkeypatch, rng):
    """Every way of splitting the work between two threads (the batch; or each step's hidden units,
    in one parallel region with barriers between steps or one region per step) gives PyTorch's
    numbers, forward and backward, with batch rows and hidden units not divisible evenly (threads that
    split the units share the middle one of 3 panels by rows, ``unit_share``).  Layer inputs of 24
    and 40 features are projected by the threads that split the batch, the second layer's 320
    (bi-2-layers) before them, by one packed product on AVX-512, else BLAS
    (``PROJECT_BY_BATCH_MAX_INPUT``, ``projects_packed``)."""
    from nblstm import engine

    monkeypatch.setattr(engine.CPUBackend, "plan", staticmethod(lambda *args: plan))
    model = LSTM(24, 160, dtype="float64", seed=8, **extra)
    x = rng.standard_normal((8, 30, 24))
    check_against_torch(model, x, _random_state(model, 30, rng), rng)
    model.eval()
    twin = torch_twin(model)
    assert_close(model(x)[0], numpy(twin(tensor(x))[0]), np.float64)
    # Inference in blocks of 3, 3 and 2 steps: the weights are packed in the first block's region only.
    monkeypatch.setattr(engine, "INFERENCE_BLOCK_ROWS", 3 * 30)
    in_blocks = LSTM(24, 160, dtype="float64", **extra).eval()
    in_blocks.load_state_dict(model.state_dict())
    assert_close(in_blocks(x)[0], numpy(twin(tensor(x))[0]), np.float64)


@pytest.mark.parametrize("seq_len", [1, 2, 3])
@pytest.mark.parametrize("plan", [(1, False, False, True), (2, True, False, True), (2, False, True, True)],
                         ids=["one-thread", "units-one-region", "batch-split"])
def test_short_training_on_packed_weights_matches_torch(seq_len, plan, monkeypatch, rng):
    """Training packs the weights for calls of 1-3 steps too beyond batch 32 from hidden 256
    (``packed.packs_weights``): the same plans forced at a smaller size give PyTorch's gradients."""
    from nblstm import engine

    monkeypatch.setattr(engine.CPUBackend, "plan", staticmethod(lambda *args: plan))
    model = LSTM(24, 72, dtype="float64", seed=4, num_layers=2)
    x = rng.standard_normal((seq_len, 9, 24))
    check_against_torch(model, x, _random_state(model, 9, rng), rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plan", [(1, False, False, False), (2, True, False, False), (2, False, False, False)],
                         ids=["one-thread", "units-one-region", "units-region-per-step"])
def test_training_on_plain_weights_with_few_rows_matches_torch(plan, dtype, monkeypatch, rng):
    """Short training calls at batch 2-32 from hidden 256 run on plain weights (``packed.packs_weights``):
    the backward's state-gradient products, d_gates @ w_hh on a few rows, and the input gradient run
    as register tiles over the weights' rows in place (``blas.uses_panels``; hidden 520: whole
    panels of columns and a tail), and give PyTorch's gradients."""
    from nblstm import engine
    from nblstm.kernels.blas import uses_panels

    monkeypatch.setattr(engine.CPUBackend, "plan", staticmethod(lambda *args: plan))
    seq_len, batch, input_size, hidden = 2, 6, 256, 520
    assert uses_panels(batch, hidden // plan[0], 4 * hidden, False, False)
    assert uses_panels(seq_len * batch, input_size // plan[0], 4 * hidden, False, False)
    model = LSTM(input_size, hidden, dtype=dtype, seed=6)
    x = rng.standard_normal((seq_len, batch, input_size)).astype(dtype)
    check_against_torch(model, x, _random_state(model, batch, rng), rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", [{}, dict(bidirectional=True, num_layers=2)], ids=["one-layer", "bi-2-layers"])
def test_training_that_splits_a_batch_of_small_steps_matches_torch(extra, dtype, rng):
    """Training whose steps are too small to split between threads (hidden 16) splits its batch
    (``TRAINING_BATCH_SPLIT_MIN_WORK``, the rule's own plan), and over 600 (time, batch) rows its
    weight gradients of 64 columns split their reductions (``parallel.splits_reduction``), uneven
    ones (600 rows in blocks of 256): PyTorch's gradients."""
    import numba

    from nblstm import engine
    from nblstm.kernels.parallel import splits_reduction

    if numba.get_num_threads() < 2:
        pytest.skip("needs two threads")
    seq_len, batch, input_size, hidden = 50, 12, 24, 16
    assert engine.CPU.plan(seq_len, batch, hidden, hidden, True, input_size=input_size)[:3:2] == (2, True)
    rows, columns = seq_len * batch, 4 * hidden
    assert splits_reduction(np.empty((rows, input_size)), np.empty((input_size, columns)), True, False, 2)
    model = LSTM(input_size, hidden, dtype=dtype, seed=9, **extra)
    x = rng.standard_normal((seq_len, batch, input_size)).astype(dtype)
    check_against_torch(model, x, _random_state(model, batch, rng), rng)


@pytest.mark.parametrize("dtype, hidden", [(np.float32, 12), (np.float32, 16), (np.float32, 20), (np.float32, 32),
                                           (np.float64, 8), (np.float64, 12)], ids=str)
@pytest.mark.parametrize("plan", [(1, False, False, True), (2, True, False, True), (2, False, False, True),
                                  (2, True, True, True)],
                         ids=["one-thread", "units-one-region", "units-region-per-step", "batch-split"])
def test_state_gradient_on_a_narrow_panel_matches_torch(plan, hidden, dtype, monkeypatch, rng):
    """A state of one or two vectors (whole or padded: on AVX-512, float32 hidden 12-16 one, 20-32 two;
    float64 hidden 8 one, 12 two) packs w_hh for the backward's state gradient as one narrow panel
    (``state_panel_width``) that one of the threads multiplies (``tiles.gemm_nn_narrow``), whatever the
    plan: PyTorch's gradients, with and without a projection."""
    from nblstm import engine
    from nblstm.kernels.cpu_backward import state_panel_width
    from nblstm.kernels.simd import VECTOR_BITS, vector_lanes
    from nblstm.kernels.tiles import PANEL_VECTORS

    lanes = vector_lanes(dtype)
    assert VECTOR_BITS != 512 or state_panel_width(hidden, lanes) < PANEL_VECTORS * lanes
    monkeypatch.setattr(engine.CPUBackend, "plan", staticmethod(lambda *args, **kwargs: plan))
    for extra in ({}, dict(proj_size=6, num_layers=2)):
        model = LSTM(10, hidden, dtype=dtype, seed=12, **extra)
        x = rng.standard_normal((7, 9, 10)).astype(dtype)
        check_against_torch(model, x, _random_state(model, 9, rng), rng)
