"""Bad input gets a clear ValueError/TypeError naming what was expected and what was given;
awkward but valid input (non-contiguous, Fortran-ordered, read-only, other float dtypes) just works."""
import numpy as np
import pytest

from nblstm.api import LSTM, LSTMCell


@pytest.fixture
def model():
    return LSTM(3, 4, num_layers=2, seed=0)


@pytest.fixture
def x(rng):
    return rng.standard_normal((5, 2, 3)).astype(np.float32)


def states(batch=2, layers=2, hidden=4, dtype=np.float32):
    return np.zeros((layers, batch, hidden), dtype), np.zeros((layers, batch, hidden), dtype)


@pytest.mark.parametrize("shape,message", [
    ((3,), r"Expected input to be 2-D \(L, H_in\) or 3-D \(L, N, H_in\), got 1-D of shape \(3,\)"),
    ((5, 2, 3, 1), r"got 4-D of shape \(5, 2, 3, 1\)"),
    ((5, 2, 7), r"input_size. Expected 3, got 7 \(input shape \(5, 2, 7\)\)"),
    ((5, 7), r"input_size. Expected 3, got 7"),
    ((0, 2, 3), r"larger than 0, got input of shape \(0, 2, 3\)"),
    ((5, 0, 3), r"larger than 0, got input of shape \(5, 0, 3\)"),
    ((0, 3), r"larger than 0"),
])
def test_input_shape_errors(model, shape, message):
    with pytest.raises(ValueError, match=message):
        model(np.zeros(shape, np.float32))


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.bool_, np.complex64, object])
def test_non_float_input_refused(model, dtype):
    with pytest.raises(TypeError, match=r"input must be a floating-point array \(float32 or float64\), got dtype"):
        model(np.zeros((5, 2, 3), dtype))


def test_nested_lists_work_and_strings_are_refused(model):
    assert model([[[0.0, 1.0, 2.0]]])[0].shape == (1, 1, 4)
    with pytest.raises(TypeError, match="floating-point"):
        model([["a", "b", "c"]])


@pytest.mark.parametrize("hx,error,message", [
    ((np.zeros((2, 2, 4)), None), TypeError, r"hx must be a tuple \(h_0, c_0\) of two arrays"),
    (np.zeros((2, 2, 4)), TypeError, r"hx must be a tuple \(h_0, c_0\) of two arrays, or None for zeros; got ndarray"),
    ((np.zeros((2, 2, 4)),), TypeError, r"got tuple of length 1"),
    ((np.zeros((2, 2, 4)), np.zeros((2, 2, 4)), np.zeros((2, 2, 4))), TypeError, r"of length 3"),
    ((np.zeros((2, 4)), np.zeros((2, 2, 4))), ValueError, r"For batched 3-D input, h_0 and c_0 should also be 3-D but got \(2-D, 3-D\)"),
    ((np.zeros((1, 2, 4)), np.zeros((2, 2, 4))), ValueError, r"Expected hidden\[0\] \(h_0\) size \(2, 2, 4\), got \(1, 2, 4\)"),
    ((np.zeros((2, 3, 4)), np.zeros((2, 2, 4))), ValueError, r"Expected hidden\[0\] \(h_0\) size \(2, 2, 4\), got \(2, 3, 4\)"),
    ((np.zeros((2, 2, 4)), np.zeros((2, 2, 5))), ValueError, r"Expected hidden\[1\] \(c_0\) size \(2, 2, 4\), got \(2, 2, 5\)"),
    ((np.zeros((2, 2, 4), np.int32), np.zeros((2, 2, 4))), TypeError, r"h_0 must be a floating-point array"),
    ((np.zeros((2, 2, 4)), np.zeros((2, 2, 4), complex)), TypeError, r"c_0 must be a floating-point array"),
])
def test_state_errors(model, x, hx, error, message):
    with pytest.raises(error, match=message):
        model(x, hx)


def test_unbatched_state_errors(model, x):
    with pytest.raises(ValueError, match=r"For unbatched 2-D input, h_0 and c_0 should also be 2-D but got \(3-D, 3-D\)"):
        model(x[:, 0], states())
    with pytest.raises(ValueError, match=r"Expected hidden\[0\] \(h_0\) size \(2, 4\), got \(2, 5\)"):
        model(x[:, 0], (np.zeros((2, 5)), np.zeros((2, 4))))


def test_projection_state_sizes_named():
    model = LSTM(3, 6, proj_size=2)
    with pytest.raises(ValueError, match=r"Expected hidden\[0\] \(h_0\) size \(1, 2, 2\), got \(1, 2, 6\)"):
        model(np.zeros((4, 2, 3)), (np.zeros((1, 2, 6)), np.zeros((1, 2, 6))))


def test_cell_errors():
    cell = LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"LSTMCell: Expected input to be 1-D \(H_in,\) or 2-D \(N, H_in\), got 3-D"):
        cell(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"input_size. Expected 3, got 5"):
        cell(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"Expected batch size larger than 0"):
        cell(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"Expected hx\[1\] \(c\) of shape \(2, 4\), got \(2, 5\)"):
        cell(np.zeros((2, 3)), (np.zeros((2, 4)), np.zeros((2, 5))))
    with pytest.raises(ValueError, match=r"Expected hx\[0\] \(h\) of shape \(4,\), got \(2, 4\)"):
        cell(np.zeros(3), (np.zeros((2, 4)), np.zeros(4)))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h, c\)"):
        cell(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(TypeError, match="floating-point"):
        cell(np.zeros((2, 3), np.int16))


def test_awkward_layouts_give_the_same_result(model, x):
    expected, (h_n, c_n) = model(x)
    fortran = np.asfortranarray(x)
    strided = np.repeat(x, 2, axis=2)[:, :, ::2]
    assert not strided.flags.c_contiguous
    readonly = x.copy()
    readonly.flags.writeable = False
    reversed_view = x[::-1][::-1]
    for variant in (fortran, strided, readonly, reversed_view):
        output, (h, c) = model(variant)
        np.testing.assert_array_equal(output, expected)
        np.testing.assert_array_equal(h, h_n)
    h0, c0 = states()
    h0.flags.writeable = False
    np.testing.assert_array_equal(model(x, (h0, np.asfortranarray(c0)))[0], expected)
    assert readonly.flags.writeable is False  # inputs are never written


@pytest.mark.parametrize("input_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("model_dtype", [np.float32, np.float64])
def test_float_inputs_are_converted_to_the_model_dtype(input_dtype, model_dtype, rng):
    model = LSTM(3, 4, dtype=model_dtype, seed=0)
    x = rng.standard_normal((5, 2, 3)).astype(input_dtype)
    output, (h_n, c_n) = model(x)
    assert output.dtype == h_n.dtype == c_n.dtype == model_dtype
    np.testing.assert_array_equal(output, model(x.astype(model_dtype))[0])
