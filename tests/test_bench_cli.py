"""The nblstm-bench command and the harness under it: options, outputs, checks, bad input. Tiny sizes only."""
import csv
import json
import time
from types import SimpleNamespace

import numba
import numpy as np
import pytest
from click.testing import CliRunner

from nblstm.bench import cases as bench_cases
from nblstm.bench import cli
from nblstm.bench.backends import BACKENDS, Backend, Prepared, Problem, make_problem, select_backends
from nblstm.bench.cli import main
from nblstm.bench import report
from nblstm.bench.report import add_derived, cpu_caches, cpu_identity, describe_machine
from nblstm.bench import runner
from nblstm.bench.runner import Settings, measure_case, run_sweep
from nblstm.tuning import PlanTiming
from nblstm.bench.threads import thread_limit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_SIZES = ["--seq-len", "3", "--batch", "2", "--input-size", "4", "--hidden-size", "5"]
FAST = ["--threads", "1", "--repeats", "2", "--warmup", "0", "--min-sample-time", "0", "--peak-size", "32"]
FAST_SETTINGS = Settings(threads=1, repeats=2, warmup=0, min_sample_s=0.0)


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "plot", "backends", "peak"):
        assert command in result.output


def test_machine_info_tells_the_cpu_generation_and_caches(tmp_path):
    """A VM may name its CPU only "AMD EPYC": the results also keep its family, model and stepping, its
    data caches and the kernels' vector width, and the summary prints them."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                       "model name\t: AMD EPYC\nstepping\t: 1\n\nprocessor\t: 1\ncpu family\t: 99\n")
    identity = cpu_identity(report._cpuinfo(str(cpuinfo)))
    assert identity == {"vendor": "AuthenticAMD", "family": 25, "model": 17, "stepping": 1}
    assert cpu_identity({"model": "?"}) == {"vendor": None, "family": None, "model": None, "stepping": None}
    cache = tmp_path / "cache"
    for index, (level, kind, size) in enumerate([("1", "Data", "32K"), ("1", "Instruction", "32K"),
                                                 ("2", "Unified", "1024K"), ("3", "Unified", "32768K")]):
        entry = cache / f"index{index}"
        entry.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (entry / name).write_text(value + "\n")
    caches = cpu_caches(str(cache))
    assert caches == {"L1d": 32 << 10, "L2": 1 << 20, "L3": 32 << 20}
    assert cpu_caches(str(tmp_path / "none")) == {}
    machine = {"cpu": "AMD EPYC", "cpu_id": identity, "caches": caches, "vector_bits": 512, "threads": 2}
    assert describe_machine(machine) == ("AMD EPYC (family 25 model 17), L2 1 MiB, L3 32 MiB, 512-bit vectors "
                                         "in nblstm's kernels, 2 threads")


def test_tiny_run_writes_json_csv_and_png(tmp_path):
    paths = {kind: tmp_path / f"out.{kind}" for kind in ("json", "csv", "png")}
    result = invoke("run", "-b", "nblstm", "-b", "numpy", "--mode", "both", *TINY_SIZES, "--layers", "1",
                    "--layers", "2", "--bidirectional", "--dtype", "float64", *FAST,
                    "--json", str(paths["json"]), "--csv", str(paths["csv"]), "--plot", str(paths["png"]))
    assert result.exit_code == 0, result.output
    results = json.loads(paths["json"].read_text())
    assert results["format"] == "nblstm-bench/1"
    assert results["machine"]["threads"] == 1 and results["machine"]["libraries"]["numpy"] == np.__version__
    assert results["machine"]["vector_bits"] in (256, 512)
    assert f"machine: {describe_machine(results['machine'])}" in result.output
    assert set(results["peak"]) == {"float64"}
    rows = results["rows"]
    assert len(rows) == 2 * 2 * 2  # cases x modes x backends
    assert {(r["num_layers"], r["mode"], r["backend"]) for r in rows} == {
        (layers, mode, backend) for layers in (1, 2) for mode in ("fwd", "train") for backend in ("nblstm", "numpy")}
    for row in rows:
        assert row["status"] == "ok", row
        assert row["bidirectional"] and row["dtype"] == "float64"
        assert row["q1_s"] <= row["median_s"] <= row["q3_s"] and row["gflops"] > 0 and row["seq_per_s"] > 0
        assert row["idle_call_s"] > 0
        assert row["baseline"] == "numpy"  # no torch in this run
    with open(paths["csv"], newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert paths["png"].read_bytes().startswith(PNG_MAGIC)
    assert "median ms" in result.output and "idle ms" in result.output


def test_tuned_backend_tunes_at_set_up_and_the_summary_says_so(tmp_path, monkeypatch):
    """nblstm-tuned runs nblstm.tune on each case's model before its first call: the tuning's time is the
    row's setup_s, which the summary adds up per backend apart from the first-call overhead."""
    tuned = []

    def tune(model, x, rounds):
        tuned.append((model.training, x.shape, rounds))
        return [PlanTiming(1, "none", True, 1.0, False, False), PlanTiming(2, "units", False, 2.0, True, True)]

    monkeypatch.setattr("nblstm.tune", tune)
    path = tmp_path / "out.json"
    result = invoke("run", "-b", "nblstm-tuned", "-b", "numpy", "--mode", "both", *TINY_SIZES, *FAST,
                    "--json", str(path))
    assert result.exit_code == 0, result.output
    assert tuned == [(False, (3, 2, 4), 3), (True, (3, 2, 4), 3)]
    rows = {(row["backend"], row["mode"]): row for row in json.loads(path.read_text())["rows"]}
    assert all(row["status"] == "ok" and row["setup_s"] > 0 for row in rows.values())
    assert {row["plan"] for (backend, _), row in rows.items() if backend == "nblstm-tuned"} == {
        "2 threads splitting each step's units, weights as they are (the default)"}
    assert {row["plan"] for (backend, _), row in rows.items() if backend == "numpy"} == {""}
    setups = {name: sum(row["setup_s"] for (backend, _), row in rows.items() if backend == name)
              for name in ("nblstm-tuned", "numpy")}
    assert ("set-up, not in the timings (building the models; nblstm-tuned's tunes them): "
            f"nblstm-tuned {setups['nblstm-tuned']:.2f} s, numpy {setups['numpy']:.2f} s") in result.output
    assert "first-call overhead, not in the timings (compilation, cache loading, set-up): nblstm-tuned" in result.output


def test_the_tuned_backend_runs_only_when_named():
    available, _ = select_backends()
    assert "nblstm-tuned" not in {backend.name for backend in available}
    assert "nblstm-tuned" in {backend.name for backend in select_backends(["nblstm-tuned"])[0]}
    assert "available (runs when named: -b nblstm-tuned)" in invoke("backends").output


def test_run_without_paths_fills_the_results_folder(tmp_path):
    result = invoke("run", "-b", "numpy", "--mode", "fwd", *TINY_SIZES, *FAST, "--out", str(tmp_path / "res"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["results.csv", "results.json", "results.png"]


def test_no_arguments_runs_the_quick_preset_into_a_timestamped_folder(monkeypatch, tmp_path):
    monkeypatch.setitem(bench_cases.PRESETS, "quick", (bench_cases.NAMED["tiny"],))
    monkeypatch.chdir(tmp_path)
    result = invoke()
    assert result.exit_code == 0, result.output
    [folder] = (tmp_path / "nblstm-results").iterdir()
    results = json.loads((folder / "results.json").read_text())
    assert results["settings"]["preset"] == "quick"
    assert {row["case"] for row in results["rows"]} == {bench_cases.NAMED["tiny"].label}


def test_plot_redraws_saved_results(tmp_path):
    saved = tmp_path / "r.json"
    assert invoke("run", "-b", "numpy", "--mode", "fwd", *TINY_SIZES, *FAST, "--json", str(saved)).exit_code == 0
    result = invoke("plot", str(saved), "-o", str(tmp_path / "again.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again.png").read_bytes().startswith(PNG_MAGIC)
    assert invoke("plot", str(saved)).exit_code == 0
    assert (tmp_path / "r.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_refuses_a_file_that_is_not_results(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    result = CliRunner().invoke(main, ["plot", str(other)])
    assert result.exit_code == 2 and "not an nblstm-bench results file" in result.output


def test_backends_lists_every_backend_with_a_reason_when_unavailable():
    result = invoke("backends")
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if line and not line.startswith(" ")]
    assert [line.split()[0] for line in lines] == list(BACKENDS)
    for name, backend in BACKENDS.items():
        reason = backend.unavailable_reason()
        if reason:
            assert f"unavailable: {reason}" in result.output


def test_peak_runs_on_a_tiny_size():
    result = invoke("peak", "--size", "32", "--dtype", "float32", "--threads", "1", "--repeats", "1")
    assert result.exit_code == 0
    assert "float32:" in result.output and "GFLOP/s" in result.output
    assert result.output.startswith("machine: ") and result.output.splitlines()[0].endswith(", 1 thread")


@pytest.mark.parametrize("args, message", [
    (["--hidden-size", "-1"], "--hidden-size"),
    (["--hidden-size", "0"], "--hidden-size"),
    (["--batch", "0"], "--batch"),
    (["--backend", "fortran"], "--backend"),
    (["--mode", "sideways"], "--mode"),
    (["--dtype", "float16"], "--dtype"),
    (["--threads", "0"], "--threads"),
    (["--preset", "quick", "--hidden-size", "8"], "cannot be combined"),
    (["--hidden-size", "8", "--proj-size", "8"], "proj_size"),
    (["--preset", "huge"], "--preset"),
])
def test_bad_options_get_a_clear_message_and_a_nonzero_exit(args, message):
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_asking_only_for_unavailable_backends_fails(monkeypatch):
    monkeypatch.setattr(BACKENDS["numpy"], "unavailable_reason", lambda: "switched off for this test")
    result = CliRunner().invoke(main, ["run", "-b", "numpy", *TINY_SIZES, *FAST])
    assert result.exit_code == 1
    assert "switched off for this test" in result.output and "none of the selected backends" in result.output


class WrongGateOrder(Backend):
    """The NumPy backend with the forget and cell gates swapped (a plausible layout bug); no projection."""

    name = "wrong"

    def prepare(self, problem, mode, threads):
        swapped = {}
        for name, value in problem.params.items():
            i, f, g, o = np.split(value, 4, axis=0)
            swapped[name] = np.concatenate([i, g, f, o])
        wrong = Problem(problem.case, swapped, problem.x, problem.grad_output)
        return BACKENDS["numpy"].prepare(wrong, mode, threads)


def test_a_backend_that_disagrees_with_the_reference_is_reported_and_not_timed():
    case = bench_cases.NAMED["tiny"]
    rows = measure_case(case, ["fwd"], [WrongGateOrder(), BACKENDS["numpy"]], FAST_SETTINGS)
    by_backend = {row["backend"]: row for row in rows}
    assert by_backend["wrong"]["status"] == "mismatch" and "median_s" not in by_backend["wrong"]
    assert "exceeds" in by_backend["wrong"]["reason"]
    assert by_backend["numpy"]["status"] == "ok" and by_backend["numpy"]["median_s"] > 0


class Failing(Backend):
    name = "failing"

    def prepare(self, problem, mode, threads):
        return Prepared(lambda: 1 / 0, lambda raw: {})


def test_a_backend_that_raises_is_reported_and_the_sweep_goes_on():
    rows = measure_case(bench_cases.NAMED["tiny"], ["fwd"], [Failing(), BACKENDS["numpy"]], FAST_SETTINGS)
    by_backend = {row["backend"]: row for row in rows}
    assert by_backend["failing"]["status"] == "error" and "ZeroDivisionError" in by_backend["failing"]["reason"]
    assert by_backend["numpy"]["status"] == "ok"


class SlowAfterIdle(Backend):
    """NumPy, except that the first call after each of the runner's pauses takes 20 ms more and the
    second 10 ms more (still coming back up to speed)."""

    name = "numpy"

    def __init__(self, monkeypatch):
        self.delays = []

        def sleep(seconds):
            self.delays = [0.02, 0.01]

        monkeypatch.setattr(runner, "time", SimpleNamespace(sleep=sleep, perf_counter=time.perf_counter))

    def prepare(self, problem, mode, threads):
        numpy = BACKENDS["numpy"].prepare(problem, mode, threads)

        def run():
            if self.delays:
                time.sleep(self.delays.pop(0))
            return numpy.run()

        return Prepared(run, numpy.collect)


def test_the_calls_after_an_idle_pause_are_kept_out_of_the_samples(monkeypatch):
    """The first call after a pause is reported apart; the next ones, still slow, are not timed."""
    backend = SlowAfterIdle(monkeypatch)
    settings = Settings(threads=1, repeats=3, warmup=0, min_sample_s=0.0)
    [row] = measure_case(bench_cases.NAMED["tiny"], ["fwd"], [backend], settings)
    assert row["status"] == "ok" and row["samples"] == 3
    assert row["idle_call_s"] >= 0.02
    assert row["max_s"] < 0.01


def test_each_row_says_how_long_the_threads_took_to_meet_after_its_samples(monkeypatch):
    """After each sample the runner times two threads meeting at the kernels' barrier (``placement.barrier_ns``):
    the row keeps the median of its samples' times, the table prints it and says what it means."""
    if numba.get_num_threads() < 2:
        pytest.skip("one thread: nothing meets")
    # the sweep's first (compiling) call, then after each sample: rounds of (numpy, nblstm), (nblstm, numpy), ...
    measured = iter([9999.0, 100.0, 500.0, 90.0, 80.0, 70.0, 60.0])
    monkeypatch.setattr(runner, "barrier_ns", lambda: next(measured))
    settings = Settings(threads=2, repeats=3, warmup=0, min_sample_s=0.0)
    [(_, rows)] = run_sweep([bench_cases.NAMED["tiny"]], ["fwd"], [BACKENDS["numpy"], BACKENDS["nblstm"]], settings)
    assert {row["backend"]: row["barrier_ns"] for row in rows} == {"numpy": 80.0, "nblstm": 90.0}
    table = report.format_table([dict(row, baseline=None, speedup=None, seq_per_s=1.0, gflops=1.0, pct_peak=None)
                                 for row in rows])
    assert "barrier ns" in table.splitlines()[0] and "barrier ns = two threads meeting" in table
    monkeypatch.undo()
    [(_, rows)] = run_sweep([bench_cases.NAMED["tiny"]], ["fwd"], [BACKENDS["numpy"]], FAST_SETTINGS)
    assert rows[0]["barrier_ns"] is None  # one thread


@pytest.mark.parametrize("name", ["tiny", "stacked-bi"])
def test_onnxruntime_graph_matches_the_reference(name):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rows = measure_case(bench_cases.NAMED[name], ["fwd", "train"], [BACKENDS["onnxruntime"]], FAST_SETTINGS)
    by_mode = {row["mode"]: row for row in rows}
    assert by_mode["fwd"]["status"] == "ok", by_mode["fwd"]["reason"]
    assert by_mode["train"]["status"] == "unsupported"


def test_every_available_backend_agrees_with_the_reference_in_both_modes():
    available = [b for b in BACKENDS.values() if b.unavailable_reason() is None]
    [(_, rows)] = run_sweep([bench_cases.NAMED["stacked-bi"]], ["fwd", "train"], available, FAST_SETTINGS)
    for row in rows:
        assert row["status"] in ("ok", "unsupported"), row


def test_flop_count_follows_the_documented_formula():
    L, N, I, H = 10, 2, 3, 4
    assert bench_cases.Case(L, N, I, H).flops("fwd") == 2 * L * N * 4 * H * (I + H)
    assert bench_cases.Case(L, N, I, H).flops("train") == 3 * 2 * L * N * 4 * H * (I + H)
    stacked = bench_cases.Case(L, N, I, H, num_layers=2, bidirectional=True)
    assert stacked.flops("fwd") == 2 * (2 * L * N * 4 * H * (I + H)) + 2 * (2 * L * N * 4 * H * (2 * H + H))
    projected = bench_cases.Case(L, N, I, H, proj_size=2)
    assert projected.flops("fwd") == 2 * L * N * 4 * H * (I + 2) + 2 * L * N * H * 2


def test_problem_is_the_same_for_the_same_seed():
    first, second = make_problem(bench_cases.NAMED["tiny"], 3), make_problem(bench_cases.NAMED["tiny"], 3)
    assert all(np.array_equal(first.params[k], second.params[k]) for k in first.params)
    assert np.array_equal(first.x, second.x) and np.array_equal(first.grad_output, second.grad_output)


def test_thread_limit_sets_and_restores_numba_threads():
    before = numba.get_num_threads()
    with thread_limit(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


def test_presets_hold_the_sizes_of_the_brief():
    seeds = {(c.seq_len, c.batch, c.input_size, c.hidden_size) for c in bench_cases.PRESETS["seeds"]}
    assert {(100, 64, 256, 256), (10, 1, 20, 20), (1000, 8, 256, 256), (100, 64, 512, 1024)} <= seeds
    deepbench = bench_cases.PRESETS["deepbench"]
    assert all(c.input_size == c.hidden_size for c in deepbench)
    assert {c.modes for c in deepbench if c.batch <= 4} == {("fwd",)}
    assert set(bench_cases.PRESETS["quick"]) <= set(bench_cases.PRESETS["full"])



def _timed(backend, device, median_s):
    return dict(backend=backend, device=device, case="L1 N1 I1 H1", mode="fwd", dtype="float32", status="ok",
                median_s=median_s, batch=1, flops=1e9)


def test_gpu_backends_are_compared_with_pytorch_on_the_gpu():
    rows = [_timed("nblstm", "cpu", 1.0), _timed("torch-cpu", "cpu", 2.0), _timed("numba-cuda", "cuda", 0.5),
            _timed("torch-cuda", "cuda", 0.25)]
    add_derived(rows, {"float32": 100.0})
    by_backend = {row["backend"]: row for row in rows}
    assert (by_backend["nblstm"]["baseline"], by_backend["nblstm"]["speedup"]) == ("torch-cpu", 2.0)
    assert (by_backend["numba-cuda"]["baseline"], by_backend["numba-cuda"]["speedup"]) == ("torch-cuda", 0.5)
    assert by_backend["nblstm"]["pct_peak"] == 1.0 and by_backend["numba-cuda"]["pct_peak"] is None
    # without PyTorch on the GPU a GPU row has no speed-up, rather than one over a CPU time
    alone = [_timed("numba-cuda", "cuda", 0.5), _timed("torch-cpu", "cpu", 2.0)]
    add_derived(alone, {})
    assert (alone[0]["baseline"], alone[0]["speedup"]) == (None, None)


def test_a_run_of_gpu_backends_only_measures_no_cpu_peak(monkeypatch, tmp_path):
    monkeypatch.setattr(BACKENDS["numpy"], "device", "cuda")  # stands in for a GPU backend
    monkeypatch.setattr(cli, "measure_peak", lambda *args: pytest.fail("the CPU peak was measured"))
    result = invoke("run", "-b", "numpy", "--mode", "fwd", *TINY_SIZES, *FAST, "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    assert "matrix-product peak" not in result.output
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["peak"] == {}
    assert [(row["device"], row["pct_peak"]) for row in results["rows"]] == [("cuda", None)]
