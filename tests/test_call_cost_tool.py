"""tools/call_cost.py runs and reports both costs (the numbers themselves belong to benchmarks, not tests)."""
import pathlib
import runpy

TOOL = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "tools" / "call_cost.py"))


def test_call_cost_prints_both_costs(capsys):
    TOOL["main"](["--hidden-size", "3", "--input-size", "2", "--short", "2", "--long", "4", "--repeats", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("seq_len 2: ") and lines[1].startswith("seq_len 4: ")
    assert lines[2].startswith("per step ") and "fixed cost per call" in lines[2]
