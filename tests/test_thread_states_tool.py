"""tools/thread_states.py runs and prints a line per sample, then the samples sorted (the numbers are for people)."""
import pathlib
import runpy

import numba
import pytest

TOOL = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "tools" / "thread_states.py"))


def test_thread_states_prints_each_sample_and_sorts_them(capsys):
    if numba.get_num_threads() < 2:
        pytest.skip("one thread: nothing meets")
    TOOL["main"](["--seq-len", "3", "--batch", "4", "--input-size", "2", "--hidden-size", "40", "--samples", "3",
                  "--calls", "2", "--pause", "0"])
    header, *samples, title, first, second, third = capsys.readouterr().out.splitlines()
    assert header.startswith("L3 N4 I2 H40 forward, units split (2, True, False, ") and len(samples) == 3
    assert all("ms, rule's plan" in line and "ms, barrier right after" in line for line in samples)
    assert title == "sorted by the barrier: ns, units split ms, rule's plan ms, one thread ms"
    assert all(len(line.split()) == 4 for line in (first, second, third))
    meetings = [float(line.split()[0]) for line in (first, second, third)]
    assert meetings == sorted(meetings) and meetings[0] > 0


def test_thread_states_needs_two_threads(capsys):
    with pytest.raises(SystemExit):
        TOOL["main"](["--threads", "1", "--samples", "1"])
    assert "do not meet at a barrier" in capsys.readouterr().err
