"""Regression benchmarks on the named cases of ``nblstm.bench.cases``.

``test_nblstm_speed`` times nblstm alone with pytest-benchmark (keep a history
with ``--benchmark-autosave`` and compare with ``--benchmark-compare``).
``test_speed_relative_to_torch_is_above_floor`` times nblstm and PyTorch CPU
interleaved in the same run on the same case (the ``nblstm-bench`` runner,
which also checks both against the float64 reference) and fails when nblstm's
speed relative to PyTorch falls below the floor in ``bench/floors.json``.
Both run on the thread count given there.  The floors are kept by kind:
``fwd`` and ``train`` time ``nblstm.api.LSTM``, ``frozen`` the forward of
``nblstm.freeze`` of it.
"""
import json
import pathlib

import pytest

from nblstm.bench.backends import BACKENDS, make_problem
from nblstm.bench.cases import NAMED
from nblstm.bench.runner import Settings, run_sweep
from nblstm.bench.threads import thread_limit

FLOORS_FILE = pathlib.Path(__file__).with_name("floors.json")
FLOORS = json.loads(FLOORS_FILE.read_text())
THREADS = FLOORS["threads"]
SETTINGS = Settings(threads=THREADS, repeats=7, warmup=1, min_sample_s=0.05)
FLOOR_CASES = [(kind, name) for kind, floors in FLOORS["floors"].items() for name in floors]
# The nblstm-bench backend and mode each kind of floor times.
KINDS = {"fwd": ("nblstm", "fwd"), "train": ("nblstm", "train"), "frozen": ("nblstm-frozen", "fwd")}


@pytest.mark.parametrize("kind, name", FLOOR_CASES)
def test_nblstm_speed(benchmark, kind, name):
    case, (backend, mode) = NAMED[name], KINDS[kind]
    benchmark.group = f"{backend} {mode}"
    benchmark.extra_info.update(case=case.label, threads=THREADS)
    with thread_limit(THREADS):
        prepared = BACKENDS[backend].prepare(make_problem(case), mode, THREADS)
        prepared.run()  # compilation or cache loading stays out of the timing
        benchmark(prepared.run)


@pytest.mark.parametrize("kind, name", FLOOR_CASES)
def test_speed_relative_to_torch_is_above_floor(kind, name, record_property):
    pytest.importorskip("torch")
    case, floor, (backend, mode) = NAMED[name], FLOORS["floors"][kind][name], KINDS[kind]
    [(_, rows)] = run_sweep([case], [mode], [BACKENDS[backend], BACKENDS["torch-cpu"]], SETTINGS)
    by_backend = {row["backend"]: row for row in rows}
    for row in rows:
        assert row["status"] == "ok", f"{row['backend']} {mode} on {case.label}: {row['status']}: {row['reason']}"
    ratio = by_backend["torch-cpu"]["median_s"] / by_backend[backend]["median_s"]
    record_property("speed_relative_to_torch", ratio)
    print(f"{backend} {mode} {name} ({case.label}, {THREADS} threads): {ratio:.3f}x PyTorch CPU (floor {floor})")
    assert ratio >= floor, (f"{backend} {mode} on {name} ({case.label}) ran at {ratio:.3f}x PyTorch CPU's speed, "
                            f"below the floor {floor} in {FLOORS_FILE.name}")
