"""tools/plans_by_state.py: the rules' plan for each thread state, timed in whichever state the machine is in."""
import pathlib
import runpy

import numba
import pytest

from nblstm import engine, placement

TOOL = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "tools" / "plans_by_state.py"))


@pytest.mark.skipif(numba.get_num_threads() < 2 or not placement.runs_together(), reason="nothing meets")
def test_plans_by_state_times_both_plans_and_prints_them_by_state(capsys):
    TOOL["main"](["--case", "30,4,128", "--case", "20,1,128,train", "--input-size", "8", "--seconds", "0.3"])
    lines = capsys.readouterr().out.splitlines()
    heads = [line for line in lines if not line.startswith("  ")]
    near_plan = engine.CPU.plan(30, 4, 128, 128, False, True, 8)
    assert heads == [(f"L30 N4 I8 H128 forward: near plan {near_plan}, far plan (1, False, False, True) "
                      "(threads, together, by batch, packed)"),
                     ("L20 N1 I8 H128 training: near plan (2, True, False, True), far plan (1, False, False, True) "
                      "(threads, together, by batch, packed)")]
    states = [line for line in lines if line.startswith("  threads ")]
    assert states and all("ms, far plan" in line and "samples each)" in line for line in states)


@pytest.mark.parametrize("training", [False, True])
def test_a_plan_pinned_for_both_states_runs_in_either(training, monkeypatch, rng):
    x = rng.standard_normal((30, 4, 8)).astype("float32")
    model, call = TOOL["pinned_call"](30, 4, 128, training, 8, (1, False, False, True), x)
    for far in (False, True):
        monkeypatch.setattr(placement, "far_apart", lambda far=far: far)
        call()
    prepared = model._workspace._prepared
    assert {key[-1][-1] for key in prepared} == {False, True}
    assert {forward.plan for forward in prepared.values()} == {(1, False, False, True)}


def test_a_case_is_three_numbers_and_maybe_train():
    assert TOOL["_case"]("100,4,128") == (100, 4, 128, False)
    assert TOOL["_case"]("10,1,64,train") == (10, 1, 64, True)
    with pytest.raises(Exception, match="a case is L,N,H or L,N,H,train"):
        TOOL["_case"]("10,1,64,eval")
