"""nblstm.train against torch: Linear, losses, optimizers, clipping, Sequential/LastStep."""
import numpy as np
import pytest
from oracle import assert_close, numpy, tensor, torch, torch_twin

from nblstm import LSTM
from nblstm.engine import matmul
from nblstm.train import (
    SGD,
    Adam,
    CrossEntropyLoss,
    LastStep,
    Linear,
    MSELoss,
    Sequential,
    clip_grad_norm_,
)

DTYPES = [np.float32, np.float64]


def torch_linear(linear):
    twin = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias_enabled,
                           dtype=torch.float64 if linear.dtype == np.float64 else torch.float32)
    twin.load_state_dict(linear.state_dict(as_torch=True))
    return twin


# -- Linear ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("leading", [(), (5,), (2, 4), (40, 3)], ids=str)
@pytest.mark.parametrize("features", [(3, 6), (70, 90)], ids=["loops", "BLAS on threads"])
def test_linear_matches_torch(leading, features, bias, dtype, rng):
    """Small products run as compiled loops; (40, 3, 70) -> 90 splits between threads, BLAS in each."""
    in_features, out_features = features
    linear = Linear(in_features, out_features, bias=bias, dtype=dtype, seed=0)
    twin = torch_linear(linear)
    x = rng.standard_normal(leading + (in_features,)).astype(dtype)
    grad_y = rng.standard_normal(leading + (out_features,)).astype(dtype)
    y = linear(x)
    t_x = tensor(x, requires_grad=True)
    t_y = twin(t_x)
    t_y.backward(tensor(grad_y))
    assert y.dtype == dtype and y.shape == leading + (out_features,)
    assert_close(y, numpy(t_y), dtype)
    assert_close(linear.backward(grad_y), numpy(t_x.grad), dtype, grad=True)
    for name, param in twin.named_parameters():
        assert_close(linear.grads[name], numpy(param.grad), dtype, grad=True, what=name)


def test_linear_init_accumulate_and_zero_grad(rng):
    linear = Linear(16, 4, seed=1)
    assert linear.weight.shape == (4, 16) and linear.bias.shape == (4,)
    bound = 1 / np.sqrt(16)
    for value in linear.parameters():
        assert np.abs(value).max() <= bound and np.abs(value).max() > 0.5 * bound
    x = rng.standard_normal((3, 16)).astype(np.float32)
    grad_y = np.ones((3, 4), np.float32)
    linear(x), linear(x)
    linear.backward(grad_y)
    once = linear.grads["weight"].copy()
    linear.backward(grad_y)
    assert_close(linear.grads["weight"], 2 * once, np.float32)
    linear.zero_grad()
    assert not any(grad.any() for grad in linear.grads.values())
    for grad in linear.grads.values():
        grad[...] = np.nan
    linear.zero_grad()
    linear(x)
    linear.backward(grad_y)  # overwrites what zero_grad left to be zeros
    assert_close(linear.grads["weight"], once, np.float32)
    assert_close(linear.grads["bias"], grad_y.sum(axis=0), np.float32)
    with pytest.raises(RuntimeError, match="forward pass in training mode"):
        linear.backward(grad_y)
    linear.eval()(x)
    with pytest.raises(RuntimeError):
        linear.backward(grad_y)
    with pytest.raises(ValueError, match=r"\(\.\.\., 16\)"):
        linear(np.ones((3, 5), np.float32))


def test_linear_save_load_round_trip(tmp_path, rng):
    linear = Linear(3, 2, bias=False, dtype="float64", seed=4)
    linear.save(tmp_path / "head.npz")
    loaded = Linear.load(tmp_path / "head.npz")
    assert list(loaded.state_dict()) == ["weight"] and loaded.dtype == np.float64
    x = rng.standard_normal((4, 3))
    np.testing.assert_array_equal(loaded(x), linear(x))


def test_linear_multiplies_on_numbas_threads_not_numpys(monkeypatch, rng):
    """Linear's three products go through engine.matmul: NumPy's ``@`` would leave OpenBLAS's threads
    spinning and stall the next LSTM call by milliseconds (README, Performance)."""
    import nblstm.train.layers as layers

    calls = []
    monkeypatch.setattr(layers, "matmul", lambda a, b, c, **flags: calls.append(flags) or matmul(a, b, c, **flags))
    linear = Linear(70, 90, seed=0)
    linear.backward(np.ones_like(linear(rng.standard_normal((40, 70)).astype(np.float32))))
    assert calls == [{"trans_b": True}, {"trans_a": True, "beta": 1.0}, {}]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(3, 5, 4), (1, 300, 2), (120, 90, 70), (64, 500, 100), (700, 3, 200),
                                   (32, 64, 1000), (5, 100, 600)], ids=str)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True)])
def test_engine_matmul_matches_numpy(m, n, k, trans_a, trans_b, dtype, rng):
    """The layers' product: loops, BLAS, and splits by rows, by columns or (a.T @ b of 64-127 columns
    over 512 rows or more, ``splits_reduction``) by the reduction between threads; beta accumulates."""
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b) + 0.5 * c
    matmul(a, b, c, trans_a, trans_b, beta=0.5)
    assert_close(c, expected, dtype, grad=True)


def test_engine_matmul_refuses_what_its_kernels_cannot_take():
    a, b, c = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32), np.empty((3, 5), np.float32)
    read_only = c.copy()
    read_only.flags.writeable = False
    cases = [((a, b, np.empty((3, 4), np.float32)), {}, ValueError, r"\(3, 4\) @ op\(b\) \(4, 5\) does not fit c \(3, 4\)"),
             ((a, b, c), {"trans_a": True}, ValueError, "does not fit"),
             ((a, b.astype(np.float64), c), {}, TypeError, "one dtype"),
             ((a.astype(np.int32), b, c), {}, TypeError, "int32"),
             ((a[:, ::2], b[:2], c), {}, ValueError, "a must have a contiguous last axis"),
             ((a.ravel(), b, c), {}, ValueError, "a must be a 2-D NumPy array, got 1-D"),
             ((a, b, read_only), {}, ValueError, "read-only")]
    for args, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            matmul(*args, **kwargs)


# -- losses --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_matches_torch(reduction, dtype, rng):
    pred, target = (rng.standard_normal((4, 3)).astype(dtype) for _ in range(2))
    upstream = rng.standard_normal((4, 3)) if reduction == "none" else 1.7
    loss_fn = MSELoss(reduction=reduction)
    loss = loss_fn(pred, target)
    t_pred = tensor(pred, requires_grad=True)
    t_loss = torch.nn.MSELoss(reduction=reduction)(t_pred, tensor(target))
    t_loss.backward(torch.tensor(upstream, dtype=t_loss.dtype))
    assert np.asarray(loss).dtype == dtype
    assert_close(loss, numpy(t_loss), dtype)
    grad = loss_fn.backward(upstream)
    assert grad.shape == pred.shape and grad.dtype == dtype
    assert_close(grad, numpy(t_pred.grad), dtype, grad=True)


CROSS_ENTROPY_CASES = [
    dict(shape=(5,), target=()),
    dict(shape=(6, 5), target=(6,)),
    dict(shape=(3, 5, 4), target=(3, 4)),
    dict(shape=(6, 5), target=(6,), weight=True),
    dict(shape=(6, 5), target=(6,), weight=True, ignore=True),
    dict(shape=(6, 5), target=(6,), ignore="all"),  # 'mean' over nothing: NaN loss and gradient, as torch
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CROSS_ENTROPY_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_cross_entropy_matches_torch(case, reduction, dtype, rng):
    logits = 3 * rng.standard_normal(case["shape"]).astype(dtype)
    target = rng.integers(0, 5, case["target"])
    kwargs = {}
    if case.get("weight"):
        kwargs["weight"] = rng.uniform(0.5, 2.0, 5).astype(dtype)
    if case.get("ignore"):
        target[slice(None) if case["ignore"] == "all" else [1, 4]] = 7
        kwargs["ignore_index"] = 7
    loss_fn = CrossEntropyLoss(reduction=reduction, **kwargs)
    loss = loss_fn(logits, target)
    t_logits = tensor(logits, requires_grad=True)
    t_kwargs = {k: tensor(v) if k == "weight" else v for k, v in kwargs.items()}
    t_loss = torch.nn.CrossEntropyLoss(reduction=reduction, **t_kwargs)(t_logits, torch.from_numpy(target))
    upstream = rng.standard_normal(case["target"]) if reduction == "none" else 0.5
    t_loss.backward(torch.tensor(upstream, dtype=t_loss.dtype))
    assert np.shape(loss) == tuple(t_loss.shape)
    assert_close(loss, numpy(t_loss), dtype)
    assert_close(loss_fn.backward(upstream), numpy(t_logits.grad), dtype, grad=True)


def test_loss_errors():
    with pytest.raises(ValueError, match="reduction"):
        MSELoss(reduction="avg")
    with pytest.raises(RuntimeError, match="first"):
        MSELoss().backward()
    with pytest.raises(ValueError, match="shape"):
        MSELoss()(np.ones((2, 1)), np.ones(2))
    with pytest.raises(IndexError, match="Target 5 is out of bounds"):
        CrossEntropyLoss()(np.zeros((2, 5)), np.array([0, 5]))
    with pytest.raises(TypeError, match="class indices"):
        CrossEntropyLoss()(np.zeros((2, 5)), np.zeros(2))


# -- optimizers ----------------------------------------------------------------------------
def small_model(dtype=np.float64):
    return Sequential(LSTM(3, 4, dtype=dtype, seed=0), LastStep(), Linear(4, 2, dtype=dtype, seed=1))


def torch_params(model):
    return [torch.tensor(value.copy(), requires_grad=True) for _, value in model.named_parameters()]


def run_optimizers(model, optimizer, t_params, t_optimizer, steps, rng):
    """Feed the same random gradients to both for ``steps`` steps; compare parameters after each."""
    names = [name for name, _ in model.named_parameters()]
    for step in range(steps):
        for name, t_param in zip(names, t_params):
            grad = rng.standard_normal(t_param.shape)
            model.grads[name][...] = grad
            t_param.grad = torch.from_numpy(grad.copy())
        optimizer.step()
        t_optimizer.step()
        for name, t_param in zip(names, t_params):
            np.testing.assert_allclose(dict(model.named_parameters())[name], numpy(t_param), rtol=1e-12,
                                       atol=1e-13, err_msg=f"{name} after step {step + 1}")


@pytest.mark.parametrize("options", [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_sgd_matches_torch(options, rng):
    model = small_model()
    t_params = torch_params(model)
    run_optimizers(model, SGD(model, **options), t_params, torch.optim.SGD(t_params, **options), 6, rng)


@pytest.mark.parametrize("options", [
    dict(),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.01, weight_decay=0.05),
    dict(lr=0.01, amsgrad=True),
    dict(lr=0.02, amsgrad=True, weight_decay=0.1),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_adam_matches_torch(options, rng):
    model = small_model()
    t_params = torch_params(model)
    run_optimizers(model, Adam(model, **options), t_params, torch.optim.Adam(t_params, **options), 6, rng)


def test_adam_takes_gradients_of_any_layout_and_dtype(rng):
    """A layer's grads is a plain dict: a gradient put there as a strided float32 view still updates a
    float64 model as torch does."""
    model = LSTM(3, 4, dtype=np.float64, seed=0)
    t_params = torch_params(model)
    opt, t_opt = Adam(model, lr=0.01), torch.optim.Adam(t_params, lr=0.01)
    for (name, _), t_param in zip(model.named_parameters(), t_params):
        wide = rng.standard_normal(t_param.shape[:-1] + (2 * t_param.shape[-1],)).astype(np.float32)
        model.grads[name] = wide[..., ::2]
        t_param.grad = torch.from_numpy(wide[..., ::2].astype(np.float64))
    opt.step()
    t_opt.step()
    for (name, value), t_param in zip(model.named_parameters(), t_params):
        np.testing.assert_allclose(value, numpy(t_param), rtol=1e-12, atol=1e-13, err_msg=name)
        assert opt.state[name]["exp_avg"].shape == value.shape  # state shaped like the parameter, as torch's


def test_optimizer_follows_replaced_parameters(rng):
    """load_state_dict may swap a layer's arrays; the optimizer looks them up by name at each step."""
    model = small_model()
    opt = SGD(model, lr=1.0)
    model.load_state_dict({name: np.zeros_like(value) for name, value in model.named_parameters()})
    for grad in model.grads.values():
        grad[...] = 1.0
    opt.step()
    assert all((value == -1.0).all() for value in model.parameters())


def test_step_after_zero_grad_without_backward_sees_zeros(rng):
    """zero_grad() writes its zeros lazily; an optimizer step before any backward must still read
    zeros, in every layer of a Sequential (here: NaN before, so any leak shows)."""
    model = Sequential(LSTM(3, 4, seed=0), LastStep(), Linear(4, 2, seed=0))
    for grad in model.grads.values():
        grad[...] = np.nan
    opt = SGD(model, lr=1.0)
    opt.zero_grad()
    before = {name: value.copy() for name, value in model.named_parameters()}
    opt.step()
    for name, value in model.named_parameters():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_optimizer_arguments():
    model = small_model()
    with pytest.raises(TypeError, match="model itself"):
        Adam(model.parameters())
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(model, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        Adam(model, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="learning rate"):
        SGD(model, lr=-1)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, np.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clipped", "unclipped"])
def test_clip_grad_norm_matches_torch(max_norm, norm_type, rng):
    model = small_model()
    t_params = torch_params(model)
    for (name, _), t_param in zip(model.named_parameters(), t_params):
        grad = rng.standard_normal(t_param.shape)
        model.grads[name][...] = grad
        t_param.grad = torch.from_numpy(grad.copy())
    total = clip_grad_norm_(model, max_norm, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(t_params, max_norm, norm_type)
    assert total > max_norm if max_norm < 1 else total < max_norm
    assert_close(total, t_total.item(), np.float64)
    for (name, grad), t_param in zip(model.grads.items(), t_params):
        assert_close(grad, numpy(t_param.grad), np.float64, what=name)


# -- Sequential and LastStep -------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lstm_options", [dict(), dict(num_layers=2, bidirectional=True, batch_first=True)],
                         ids=["plain", "deep-bidirectional-batch-first"])
def test_sequential_gradients_match_torch(lstm_options, dtype, rng):
    lstm = LSTM(3, 5, dtype=dtype, seed=2, **lstm_options)
    batch_first = lstm_options.get("batch_first", False)
    head = Linear(lstm.config.num_directions * 5, 2, dtype=dtype, seed=3)
    model = Sequential(lstm, LastStep(batch_first=batch_first), head)
    x = rng.standard_normal((4, 6, 3) if batch_first else (6, 4, 3)).astype(dtype)
    y = rng.standard_normal((4, 2)).astype(dtype)
    loss_fn = MSELoss()
    loss = loss_fn(model(x), y)
    grad_x = model.backward(loss_fn.backward())

    t_lstm, t_head = torch_twin(lstm), torch_linear(head)
    t_x = tensor(x, requires_grad=True)
    t_out = t_lstm(t_x)[0]
    t_loss = torch.nn.functional.mse_loss(t_head(t_out[:, -1] if batch_first else t_out[-1]), tensor(y))
    t_loss.backward()
    assert_close(loss, t_loss.item(), dtype)
    assert_close(grad_x, numpy(t_x.grad), dtype, grad=True, what="input")
    t_grads = {f"0.{n}": p.grad for n, p in t_lstm.named_parameters()}
    t_grads.update({f"2.{n}": p.grad for n, p in t_head.named_parameters()})
    assert sorted(model.grads) == sorted(t_grads)
    for name, grad in model.grads.items():
        assert_close(grad, numpy(t_grads[name]), dtype, grad=True, what=name)


@pytest.mark.parametrize("batch_first, shape, expected", [
    (False, (7, 3, 5), (3, 5)), (True, (3, 7, 5), (3, 5)), (True, (7, 5), (5,))])
def test_last_step_layouts(batch_first, shape, expected, rng):
    x = rng.standard_normal(shape)
    step = LastStep(batch_first=batch_first)
    last = step(x)
    assert last.shape == expected
    time_axis = 1 if batch_first and len(shape) == 3 else 0
    np.testing.assert_array_equal(last, np.take(x, -1, axis=time_axis))
    grad = step.backward(np.ones(expected))
    assert grad.shape == shape and grad.sum() == np.prod(expected)
    np.testing.assert_array_equal(np.take(grad, -1, axis=time_axis), 1)
    with pytest.raises(ValueError, match="shape of the forward result"):
        step(x), step.backward(np.ones(3))


def test_sequential_state_dict_round_trip_and_checks(rng):
    model, other = small_model(), Sequential(LSTM(3, 4, dtype=np.float64, seed=9), LastStep(),
                                             Linear(4, 2, dtype=np.float64, seed=9))
    other.load_state_dict(model.state_dict())
    x = rng.standard_normal((5, 2, 3))
    np.testing.assert_array_equal(other.eval()(x), model.eval()(x))
    assert list(model.state_dict(as_torch=True)) == ["0.weight_ih_l0", "0.weight_hh_l0", "0.bias_ih_l0",
                                                     "0.bias_hh_l0", "2.weight", "2.bias"]
    with pytest.raises(ValueError, match="missing keys"):
        other.load_state_dict({"2.weight": np.zeros((2, 4))})
    linear = Linear(2, 2)
    with pytest.raises(ValueError, match="only once"):
        Sequential(linear, linear)


def test_training_lowers_the_loss(rng):
    """A few Adam steps on LSTM + head fit a fixed batch much better than the initial model."""
    model = Sequential(LSTM(2, 16, seed=0), LastStep(), Linear(16, 1, seed=0))
    x = rng.standard_normal((8, 32, 2)).astype(np.float32)
    y = x.sum(axis=(0, 2))[:, None] / 4
    loss_fn, opt = MSELoss(), Adam(model, lr=0.02)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        losses.append(float(loss_fn(model(x), y)))
        model.backward(loss_fn.backward())
        clip_grad_norm_(model, 5.0)
        opt.step()
    assert losses[-1] < 0.2 * losses[0], losses
