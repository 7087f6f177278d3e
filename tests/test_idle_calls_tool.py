"""tools/idle_calls.py runs and prints one time per call after the pause (the numbers belong to benchmarks)."""
import pathlib
import runpy

import pytest

TOOL = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "tools" / "idle_calls.py"))


def test_idle_calls_prints_each_call(capsys):
    TOOL["main"](["--seq-len", "2", "--batch", "1", "--input-size", "2", "--hidden-size", "3", "--beside", "numpy",
                  "--rounds", "2", "--calls", "3", "--pause", "0"])
    header, median, maximum = capsys.readouterr().out.splitlines()
    assert "L2 N1 I2 H3" in header and "beside numpy" in header
    for line, label in ((median, "median"), (maximum, "max")):
        name, *values = line.split()
        assert name == label and len(values) == 3 and all(float(value) > 0 for value in values)


def test_idle_calls_refuses_an_unavailable_backend(capsys):
    with pytest.raises(SystemExit):
        TOOL["main"](["--beside", "nblstm-cuda", "--rounds", "1"])
    assert "nblstm-cuda" in capsys.readouterr().err
