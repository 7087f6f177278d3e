"""The scripts in examples/, run through their run() functions on reduced sizes."""
import pathlib
import runpy

import numpy as np
import pytest
from oracle import assert_close

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def example(name):
    """The top-level names of examples/{name}.py (run without its ``__main__`` block)."""
    return runpy.run_path(str(EXAMPLES / f"{name}.py"))


def test_shapes():
    assert example("shapes")["run"]() == {"output": (5, 3, 40), "h_n": (4, 3, 20), "c_n": (4, 3, 20)}


def test_hand_set_cell_agrees_with_lstm_and_torch(capsys):
    script = example("hand_set_cell")
    results = script["run"]()
    assert list(results) == ["LSTMCell", "LSTM", "torch"]
    cell = results["LSTMCell"]
    assert cell.shape == (9,)
    for name in ("LSTM", "torch"):
        np.testing.assert_array_equal(np.round(results[name], script["DECIMALS"]), np.round(cell, script["DECIMALS"]))
        assert_close(results[name], cell, np.float32, what=name)
    # the read steps (read = 1) output o * tanh(c) of the stored value; the others are ~0
    reads = script["INPUTS"][:, 2] == 1
    assert (cell[reads] > 0.5).all() and (np.abs(cell[~reads]) < 1e-3).all()
    script["main"]()
    assert capsys.readouterr().out.count("0.642") == 6


def test_sum_regression_lowers_the_loss():
    results = example("sum_regression")["run"](n_samples=400, hidden_size=16, epochs=5, verbose=False)
    assert len(results["epoch_losses"]) == 5
    assert results["epoch_losses"][-1] < results["epoch_losses"][0]
    assert results["test_mse"] < 0.25 * results["test_mse_before"]


def test_sine_forecast_matches_torch(tmp_path):
    out = tmp_path / "sine.png"
    results = example("sine_forecast")["run"](n_points=80, hidden_size=8, epochs=4, steps=6, dtype="float64",
                                              out=str(out), compare_torch=True, verbose=False)
    assert out.stat().st_size > 10_000
    assert results["forecast"].shape == (6,) and np.isfinite(results["forecast_mse"])
    np.testing.assert_allclose(results["losses"], results["torch_losses"], rtol=1e-9)
    assert results["losses"][-1] < results["losses"][0]


@pytest.mark.parametrize("name, argv, printed", [
    ("shapes", None, "output: (5, 3, 40)"),
    ("sum_regression", ["--samples", "64", "--hidden-size", "4", "--epochs", "1"], "test MSE"),
    ("sine_forecast", ["--points", "40", "--hidden-size", "4", "--epochs", "1", "--steps", "3"], "3-step forecast"),
])
def test_command_lines(name, argv, printed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # sine_forecast writes its PNG into the working directory
    main = example(name)["main"]
    main() if argv is None else main(argv)
    assert printed in capsys.readouterr().out
