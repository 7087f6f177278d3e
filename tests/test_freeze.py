"""nblstm.freeze: a read-only inference copy whose kernels run on weights packed once."""
import itertools

import numpy as np
import pytest
from oracle import assert_close, numpy, tensor, torch_twin
from test_forward import DTYPES, MATRIX, ODD_SIZES, _case_id, _random_state, assert_same, run_both

import nblstm
from nblstm import engine
from nblstm.api import LSTM, LSTMCell
from nblstm.train import SGD, Adam, Linear


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MATRIX, ids=_case_id)
def test_frozen_lstm_matches_torch(case, dtype, rng):
    case = dict(case)
    with_state = case.pop("with_state")
    frozen = nblstm.freeze(LSTM(7, 13, dtype=dtype, seed=3, **case))
    seq_len, batch = 11, 5
    x = rng.standard_normal((batch, seq_len, 7) if case["batch_first"] else (seq_len, batch, 7)).astype(dtype)
    hx = _random_state(frozen, batch, rng) if with_state else None
    for _ in range(2):  # the second call runs on the weights the first packed
        ours, theirs = run_both(frozen, x, hx)
        assert_same(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", ODD_SIZES, ids=lambda s: "x".join(map(str, s[:4])) + str(s[4] or ""))
def test_frozen_odd_sizes_match_torch_and_the_model(sizes, dtype, rng):
    """Every plan (threads splitting the batch, each with its own packed copy, or the units, in one
    region or a region a step; padding; projections) on weights packed before the call."""
    seq_len, batch, input_size, hidden, extra = sizes
    model = LSTM(input_size, hidden, dtype=dtype, seed=5, **extra).eval()
    frozen = nblstm.freeze(model)
    x = rng.standard_normal((seq_len, batch, input_size)).astype(dtype)
    for hx in (_random_state(model, batch, rng), None):
        ours, theirs = run_both(frozen, x, hx)
        assert_same(ours, theirs, dtype)
        for a, b in zip(ours, (model(x, hx)[0],) + model(x, hx)[1]):  # plans may differ: sums in another order
            np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_frozen_cell_matches_torch(dtype, rng):
    cell = nblstm.freeze(LSTMCell(5, 20, dtype=dtype, seed=4))
    twin = torch_twin(cell)
    for batch in (1, 3, 9):
        x = rng.standard_normal((batch, 5)).astype(dtype)
        h, c = (rng.standard_normal((batch, 20)).astype(dtype) for _ in range(2))
        for hx in (None, (h, c), (h, c)):
            theirs = twin(tensor(x), None if hx is None else (tensor(h), tensor(c)))
            for a, b in zip(cell(x, hx), theirs):
                assert_close(a, numpy(b), dtype)
    assert_close(cell(x[0], (h[0], c[0]))[0], cell(x, (h, c))[0][0], dtype)  # unbatched


def test_frozen_model_is_a_copy_that_does_not_follow_the_model(rng):
    model = LSTM(6, 9, num_layers=2, bidirectional=True, seed=1).train()
    frozen = nblstm.freeze(model)
    assert frozen.frozen and not model.frozen and not frozen.training and model.training
    x = rng.standard_normal((8, 3, 6)).astype(np.float32)
    before = frozen(x)[0]
    model.weight_hh_l0[...] += 1.0
    model.load_state_dict({**model.state_dict(), "bias_ih_l1": np.ones(36, np.float32)})
    np.testing.assert_array_equal(frozen(x)[0], before)
    assert_close(model.eval()(x)[0], numpy(torch_twin(model)(tensor(x))[0]), np.float32)
    assert not np.allclose(model(x)[0], before)
    for name, array in frozen.named_parameters():
        assert not array.flags.writeable and not np.shares_memory(array, getattr(model, name))
    assert repr(frozen) == repr(model) and frozen.grads == {}


def test_frozen_model_refuses_changes_with_clear_errors():
    frozen = nblstm.freeze(LSTM(4, 5, seed=0))
    with pytest.raises(ValueError, match="read-only"):
        frozen.weight_ih_l0[0, 0] = 1.0
    with pytest.raises(RuntimeError, match="cannot set weight_hh_l0: the parameters of a frozen LSTM are read-only"):
        frozen.weight_hh_l0 = np.zeros((20, 5))
    with pytest.raises(RuntimeError, match="read-only"):
        frozen.load_state_dict(frozen.state_dict())
    with pytest.raises(RuntimeError, match="a frozen LSTM runs inference only"):
        frozen.train()
    assert frozen.eval() is frozen and frozen.train(False) is frozen
    with pytest.raises(RuntimeError, match="a frozen LSTM stays on the CPU"):
        frozen.to("cuda")
    assert frozen.to("cpu") is frozen
    with pytest.raises(RuntimeError, match="needs a forward pass in training mode"):
        frozen.backward(np.zeros((2, 1, 5), np.float32))
    for optimizer in (SGD, Adam):
        with pytest.raises(ValueError, match="read-only .* nblstm.freeze"):
            optimizer(frozen, lr=0.1)
    with pytest.raises(TypeError, match="freeze takes an nblstm LSTM, LSTMCell or Linear, got dict"):
        nblstm.freeze({})


def test_frozen_model_saves_and_loads_as_a_plain_model(tmp_path, rng):
    frozen = nblstm.freeze(LSTM(3, 4, proj_size=2, seed=2))
    frozen.save(tmp_path / "model.npz")
    loaded = LSTM.load(tmp_path / "model.npz")
    assert not loaded.frozen
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    assert_close(loaded.eval()(x)[0], frozen(x)[0], np.float32)


def test_frozen_linear_is_a_read_only_copy(rng):
    linear = Linear(4, 3, seed=0)
    frozen = nblstm.freeze(linear)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(frozen(x), linear(x))
    with pytest.raises(ValueError, match="read-only"):
        frozen.weight[...] = 0.0


def test_shapes_of_one_packing_layout_share_their_packed_weights(rng):
    """Input shapes whose plans lay the packed weights out alike share one packed copy, packed once
    (a server's sequences of many lengths do not pack, nor keep, one copy each); at most KEPT
    layouts are kept."""
    frozen = nblstm.freeze(LSTM(8, 32, num_layers=2, seed=3))
    packed = frozen._workspace._packed
    for seq_len in (10, 20, 37):
        frozen(rng.standard_normal((seq_len, 1, 8)).astype(np.float32))
    assert len(packed) == 1
    arrays = next(iter(packed.values()))
    assert len(arrays) == 2 and all(array.shape[-1] > 0 for array in arrays[0])
    for prepared in frozen._workspace._prepared.values():
        assert [run[4] for layer in prepared.runs for run in layer] == list(arrays)
    for seq_len, batch in itertools.product((1, 2, 9, 40), (1, 3, 5, 16, 64)):
        frozen(rng.standard_normal((seq_len, batch, 8)).astype(np.float32))
        assert 0 < len(packed) <= engine.Workspace.KEPT


def test_plans_on_prepacked_weights_pack_all_but_few_padded_rows():
    """With packing paid for before the call, inference packs where the plan of a call would not
    (one step of one row at hidden 128), but not a few rows that the packed path would pad (hidden
    20); training never takes prepacked weights."""
    plan = engine.CPU.plan
    assert not plan(1, 1, 128, 128, False, False, 32)[3] and plan(1, 1, 128, 128, False, False, 32, prepacked=True)[3]
    assert not plan(1, 1, 20, 20, False, False, 20, prepacked=True)[3]
    assert plan(1, 8, 20, 20, False, False, 20, prepacked=True)[3]
    assert not plan(1, 8, 128, 128, True, False, 32, prepacked=True)[3]
    workspace = engine.Workspace(prepacks=True)
    model = LSTM(32, 128, seed=0)
    prepared = workspace.prepare(engine.CPU, model.config, model._parameters, 4, 8, np.float32, True)
    assert all(array.size == 0 for array in prepared.runs[0][0][4]) and not workspace._packed


def test_frozen_kernels_get_writable_arrays_so_nothing_compiles_again(rng):
    """Numba types read-only arrays apart: had the kernels been given the frozen copy's read-only
    parameters, every kernel would compile again for them (54 s for the forward, float32, cold)."""
    from numba import types

    from nblstm.kernels.cpu_forward import lstm_layer_forward

    model = LSTM(6, 16, num_layers=2, seed=1).eval()
    x = rng.standard_normal((4, 2, 6)).astype(np.float32)
    model(x)
    nblstm.freeze(model)(x)
    assert lstm_layer_forward.signatures
    for signature in lstm_layer_forward.signatures:
        assert all(arg.mutable for arg in signature if isinstance(arg, types.Array)), signature
