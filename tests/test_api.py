"""The nn.LSTM-compatible surface: parameters, state dicts, files, modes, constructor checks."""
import numpy as np
import pytest
from oracle import numpy, tensor, torch, torch_twin

from nblstm.api import LSTM, LSTMCell

CONFIGS = [
    dict(input_size=10, hidden_size=20),
    dict(input_size=10, hidden_size=20, num_layers=2, bidirectional=True),
    dict(input_size=3, hidden_size=8, num_layers=3, bias=False, proj_size=5, bidirectional=True),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_parameter_names_shapes_and_order_equal_torch(config):
    ours = LSTM(**config)
    theirs = torch.nn.LSTM(**config)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
           [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_cell_parameter_names_equal_torch():
    ours, theirs = LSTMCell(4, 6, bias=False), torch.nn.LSTMCell(4, 6, bias=False)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
           [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]


def test_initialisation_is_uniform_in_plus_minus_one_over_sqrt_hidden():
    model = LSTM(50, 64, num_layers=2, seed=0)
    bound = 1 / np.sqrt(64)
    values = np.concatenate([p.ravel() for p in model.parameters()])
    assert values.dtype == np.float32
    assert values.min() >= -bound and values.max() <= bound
    assert values.min() < -0.95 * bound and values.max() > 0.95 * bound
    assert abs(values.mean()) < 0.01 * bound * 10
    assert abs(values.std() - bound / np.sqrt(3)) < 0.01  # std of U(-b, b)


def test_seed_makes_initialisation_reproducible():
    a, b, c = LSTM(3, 4, seed=1), LSTM(3, 4, seed=1), LSTM(3, 4, seed=2)
    generator = LSTM(3, 4, seed=np.random.default_rng(1))
    for name, value in a.named_parameters():
        np.testing.assert_array_equal(value, getattr(b, name))
        np.testing.assert_array_equal(value, getattr(generator, name))
        assert not np.array_equal(value, getattr(c, name))
    with pytest.raises(TypeError, match="seed must be"):
        LSTM(3, 4, seed="one")


@pytest.mark.parametrize("dtype,expected", [(None, np.float32), ("float32", np.float32), ("float64", np.float64),
                                            (np.float64, np.float64), (np.dtype("float32"), np.float32)])
def test_dtype_choices(dtype, expected):
    model = LSTM(3, 4, dtype=dtype)
    assert model.dtype == expected
    assert all(p.dtype == expected for p in model.parameters())
    assert model(np.ones((2, 1, 3)))[0].dtype == expected


def test_torch_dtype_accepted_and_bad_dtypes_refused():
    assert LSTM(3, 4, dtype=torch.float64).dtype == np.float64
    for bad in ("float16", np.int32, "complex64", "banana"):
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            LSTM(3, 4, dtype=bad)


@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_round_trips_through_torch(config, rng):
    ours = LSTM(**config, seed=3)
    theirs = torch.nn.LSTM(**config)
    theirs.load_state_dict(ours.state_dict(as_torch=True))  # PyTorch accepts ours
    fresh = LSTM(**config, seed=4)
    fresh.load_state_dict(theirs.state_dict())  # we accept PyTorch's (tensors)
    for name, value in ours.named_parameters():
        np.testing.assert_array_equal(getattr(fresh, name), value)
    numpy_dict = {k: numpy(v) for k, v in theirs.state_dict().items()}
    fresh.load_state_dict(numpy_dict)  # and PyTorch's converted with .numpy()
    x = rng.standard_normal((4, 2, config["input_size"])).astype(np.float32)
    np.testing.assert_allclose(fresh(x)[0], numpy(theirs(tensor(x))[0]), rtol=1e-5, atol=1e-6)


def test_state_dict_is_a_copy_and_parameters_are_live():
    model = LSTM(3, 4, seed=0)
    state = model.state_dict()
    state["weight_ih_l0"][...] = 7
    assert not (model.weight_ih_l0 == 7).any()
    dict(model.named_parameters())["weight_ih_l0"][...] = 7  # in-place updates reach the model
    assert (model.weight_ih_l0 == 7).all()


def test_load_state_dict_errors():
    model = LSTM(3, 4, num_layers=2, seed=0)
    good = model.state_dict()
    missing = {k: v for k, v in good.items() if k != "bias_hh_l1"}
    with pytest.raises(ValueError, match=r"missing keys \['bias_hh_l1'\]"):
        model.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['weight_hr_l0'\]"):
        model.load_state_dict(dict(good, weight_hr_l0=np.zeros((2, 4))))
    misshapen = dict(good, weight_hh_l1=np.zeros((16, 5)))
    before = model.weight_ih_l0.copy()
    with pytest.raises(ValueError, match=r"size mismatch for weight_hh_l1: .*\(16, 5\).*\(16, 4\)"):
        model.load_state_dict(dict(misshapen, weight_ih_l0=np.zeros((16, 3))))
    np.testing.assert_array_equal(model.weight_ih_l0, before)  # nothing changed
    with pytest.raises(TypeError, match="real numeric"):
        model.load_state_dict(dict(good, weight_ih_l0=np.zeros((16, 3), complex)))
    model.load_state_dict(missing, strict=False)  # non-strict: loads what is there


def test_parameter_assignment_is_checked():
    model = LSTM(3, 4)
    model.weight_ih_l0 = np.ones((16, 3), np.float64)
    assert model.weight_ih_l0.dtype == np.float32 and (model.weight_ih_l0 == 1).all()
    with pytest.raises(ValueError, match=r"size mismatch for weight_ih_l0"):
        model.weight_ih_l0 = np.ones((16, 4))


@pytest.mark.parametrize("cls,args", [(LSTM, dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True,
                                                  proj_size=3, batch_first=True, dropout=0.25, bias=False)),
                                      (LSTMCell, dict(input_size=5, hidden_size=7, bias=False))])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_and_load_round_trip_bit_for_bit(cls, args, dtype, tmp_path, rng):
    model = cls(**args, dtype=dtype, seed=9)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = cls.load(path)
    assert loaded.config == model.config and loaded.dtype == model.dtype
    for name, value in model.named_parameters():
        assert getattr(loaded, name).tobytes() == value.tobytes()
    with np.load(path, allow_pickle=False) as archive:  # portable: no pickles inside
        assert "__nblstm_config__" in archive.files


def test_load_refuses_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not an nblstm model file"):
        LSTM.load(tmp_path / "other.npz")
    LSTMCell(2, 3).save(tmp_path / "cell.npz")
    with pytest.raises(ValueError, match="holds a LSTMCell"):
        LSTM.load(tmp_path / "cell.npz")


def test_train_and_eval_modes():
    model = LSTM(3, 4)
    assert model.training
    assert model.eval() is model and not model.training
    assert model.train() is model and model.training
    assert torch_twin(model.eval()).training is False


def test_attributes_and_repr():
    model = LSTM(10, 20, num_layers=2, bidirectional=True, proj_size=5, batch_first=True)
    assert (model.input_size, model.hidden_size, model.num_layers, model.proj_size) == (10, 20, 2, 5)
    assert model.bidirectional and model.batch_first and model.bias
    assert repr(model) == "LSTM(10, 20, num_layers=2, batch_first=True, bidirectional=True, proj_size=5)"
    assert repr(LSTMCell(3, 4, bias=False)) == "LSTMCell(3, 4, bias=False)"
    with pytest.raises(AttributeError):
        model.weight_ih_l5


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(input_size=0, hidden_size=4), ValueError, "input_size must be greater than zero"),
    (dict(input_size=3, hidden_size=0), ValueError, "hidden_size must be greater than zero"),
    (dict(input_size=3, hidden_size=-2), ValueError, "hidden_size must be greater than zero"),
    (dict(input_size=3.0, hidden_size=4), TypeError, "input_size should be of type int"),
    (dict(input_size=3, hidden_size=4, num_layers=0), ValueError, "num_layers must be greater than zero"),
    (dict(input_size=3, hidden_size=4, proj_size=4), ValueError, "proj_size has to be smaller than hidden_size"),
    (dict(input_size=3, hidden_size=4, proj_size=-1), ValueError, "proj_size must be at least 0"),
    (dict(input_size=3, hidden_size=4, dropout=1.5), ValueError, "dropout should be a number in range"),
    (dict(input_size=3, hidden_size=4, dropout=True), ValueError, "dropout should be a number in range"),
    (dict(input_size=3, hidden_size=4, bias="yes"), TypeError, "bias should be of type bool"),
    (dict(input_size=3, hidden_size=4, batch_first=1), TypeError, "batch_first should be of type bool"),
    (dict(input_size=3, hidden_size=4, device="tpu"), ValueError, "device"),
])
def test_constructor_checks(kwargs, error, message):
    with pytest.raises(error, match=message):
        LSTM(**kwargs)


def test_dropout_on_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        LSTM(3, 4, dropout=0.5)


def test_loading_copies_into_the_live_arrays():
    """As in PyTorch, loading or assigning parameters copies into them: references stay valid."""
    model = LSTM(3, 4, seed=0)
    held = list(model.parameters())
    model.load_state_dict(LSTM(3, 4, seed=1).state_dict())
    model.weight_hh_l0 = np.full((16, 4), 2.0)
    for (name, value), reference in zip(model.named_parameters(), held):
        assert value is reference, name
    assert (held[1] == 2).all()
