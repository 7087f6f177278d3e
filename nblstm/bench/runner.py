"""How ``nblstm-bench`` measures: same problem for everyone, checked, warmed up, interleaved.

For each case and mode:

1. one ``Problem`` (weights, input, upstream gradient; seeded) is built and the
   float64 NumPy reference (``nblstm.reference``) is run on it once;
2. each backend builds its model (``setup_s``) and makes a first call
   (``first_call_s``: it includes Numba compilation or cache loading, lazy
   initialisation and allocator warm-up, so ``compile_s`` = first call minus
   the steady median is reported apart and never mixed into the timings);
3. the first call's results are compared with the reference; a backend whose
   scaled error (max |result - reference| / max(1, max |reference|), over every
   array) exceeds the dtype's tolerance is reported as ``mismatch`` and not timed;
4. ``warmup`` more untimed calls; the last one sets how many calls make one
   sample (at least ``min_sample_s`` seconds, so tiny cases are not timer noise);
5. ``repeats`` rounds; each round times one sample of every backend, in an
   order rotated by one each round, so slow drifts of the machine (turbo, other
   load) spread over all backends.  Between samples the runner sleeps
   ``SETTLE_S``: thread pools (Numba's and PyTorch's OpenMP, ONNX Runtime's,
   OpenBLAS's) keep spinning for a while after their work, and would otherwise
   take cycles from the next backend.  The garbage collector runs once before the rounds
   and is paused during them;
6. after that pause, each sample starts with one call timed on its own, the
   *idle call*: what a call costs when the process has been idle (threads
   asleep, caches cold), as when a server answers an occasional request.  It
   is reported apart (``idle_call_s``, the median over the rounds) and is not
   part of the sample: waking a sleeping thread pool can cost milliseconds on a
   virtual machine, which in a throughput sample of 100 short calls would
   count as a slower kernel.  Nor are the calls right after it: as many calls
   as a sample runs untimed before the sample.  On this project's 2-core VM
   the calls after a pause ran slower for a while (nblstm at L10 N1 H512, 2
   threads: the 2nd to 30th call after 0.15 s idle 0.95-1.3 ms, against
   0.7-0.9 ms without the pause; ``tools/idle_calls.py``), which a sample of
   0.02 s (about 25 such calls) took in whole.

Every backend runs on the same thread count (``threads.thread_limit``).
Per backend the row holds the median and the quartiles, minimum and maximum
of the per-call times of the samples, and the median time two threads took to
meet right after each sample (``nblstm.placement.barrier_ns``): on a virtual machine
it tells how near each other the hypervisor had placed the virtual CPUs.
"""
import contextlib
import gc
import math
import time
from dataclasses import dataclass

import numpy as np

from ..placement import barrier_ns
from .backends import make_problem, numpy_lstm
from .threads import thread_limit

# Scaled error allowed against the float64 reference, per dtype of the case.
TOLERANCE = {"float32": 2e-3, "float64": 1e-8}
MAX_CALLS_PER_SAMPLE = 10_000
# A case is skipped when its estimated footprint exceeds this share of the available memory.
MEMORY_SHARE = 0.8
# Pause between two timed samples, longer than thread pools spin after their work
# (OpenBLAS's threads, used by the NumPy backend, spin for about 0.1 s).
SETTLE_S = 0.15


@dataclass(frozen=True)
class Settings:
    """How to measure: thread count, timed rounds, untimed warm-up calls after the first,
    shortest sample in seconds, and the seed of the problem's random arrays."""

    threads: int = 1
    repeats: int = 5
    warmup: int = 1
    min_sample_s: float = 0.02
    seed: int = 0


def available_memory_bytes():
    """MemAvailable from /proc/meminfo (Linux), else None (no check)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def scaled_error(results, expected):
    """(largest scaled error, key where it occurs) of ``results`` against ``expected``; a missing or
    misshapen array counts as infinite error."""
    worst, where = 0.0, ""
    for key, reference in expected.items():
        actual = results.get(key)
        if actual is None or np.shape(actual) != reference.shape:
            return math.inf, f"{key} (missing or shape {np.shape(actual)} instead of {reference.shape})"
        scale = max(1.0, float(np.max(np.abs(reference), initial=0.0)))
        error = float(np.max(np.abs(np.asarray(actual, np.float64) - reference), initial=0.0)) / scale
        if not error <= worst:  # also catches NaN
            worst, where = error, key
    return worst, where


def reference_results(problem, train):
    """The float64 NumPy reference on ``problem`` (the arrays are widened, not re-drawn)."""
    params = {name: value.astype(np.float64) for name, value in problem.params.items()}
    return numpy_lstm(params, problem.case.config, problem.x.astype(np.float64),
                      problem.grad_output.astype(np.float64), train)


@contextlib.contextmanager
def _gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _timed(function, calls=1):
    """Seconds per call of ``calls`` calls of ``function``."""
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls


def _base_row(case, mode, backend, threads):
    return dict(backend=backend.name, device=backend.device, mode=mode, case=case.label,
                seq_len=case.seq_len, batch=case.batch, input_size=case.input_size,
                hidden_size=case.hidden_size, num_layers=case.num_layers, bidirectional=case.bidirectional,
                proj_size=case.proj_size, dtype=case.dtype, threads=threads, flops=case.flops(mode),
                status="ok", reason="")


def _warm_up_and_check(backend, problem, mode, expected, settings, row):
    """Prepare, first call, check, warm up; returns (run, calls per sample), or None on mismatch."""
    start = time.perf_counter()
    prepared = backend.prepare(problem, mode, settings.threads)
    row["setup_s"] = time.perf_counter() - start
    row["plan"] = prepared.plan
    start = time.perf_counter()
    first = prepared.run()
    row["first_call_s"] = time.perf_counter() - start
    error, where = scaled_error(prepared.collect(first), expected)
    del first
    row["max_error"] = error if math.isfinite(error) else None
    tolerance = TOLERANCE[problem.case.dtype]
    if not error <= tolerance:
        row.update(status="mismatch", reason=f"scaled error {error:.2e} in {where} exceeds {tolerance:.0e}")
        return None
    last = row["first_call_s"]
    for _ in range(settings.warmup):
        last = _timed(prepared.run)
    calls = min(MAX_CALLS_PER_SAMPLE, max(1, math.ceil(settings.min_sample_s / max(last, 1e-9))))
    return prepared.run, calls


def _time_interleaved(ready, repeats):
    """{name: (per-call seconds of each sample, seconds of each sample's idle call, ``barrier_ns`` right
    after each sample)}; ``ready`` is {name: (run, calls per sample)}."""
    names = list(ready)
    samples = {name: ([], [], []) for name in names}
    if not names:
        return samples
    gc.collect()
    with _gc_paused():
        for round_index in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                run, calls = ready[name]
                per_call, idle_calls, barriers = samples[name]
                time.sleep(SETTLE_S)
                idle_calls.append(_timed(run))
                _timed(run, calls)  # back up to speed, untimed
                per_call.append(_timed(run, calls))
                barriers.append(barrier_ns())  # the threads' state the sample ran in (awake, as in it)
    return samples


def _summary(samples, idle_calls, barriers, calls, first_call_s):
    times = np.asarray(samples)
    median = float(np.median(times))
    q1, q3 = (float(q) for q in np.percentile(times, [25, 75]))
    return dict(median_s=median, q1_s=q1, q3_s=q3, min_s=float(times.min()), max_s=float(times.max()),
                samples=len(samples), calls_per_sample=calls, idle_call_s=float(np.median(idle_calls)),
                compile_s=max(0.0, first_call_s - median),
                barrier_ns=None if None in barriers else float(np.median(barriers)))


def _memory_reason(case, modes, n_backends):
    available = available_memory_bytes()
    if available is None:
        return None
    needed = max(case.footprint_bytes(mode) * n_backends + case.footprint_bytes(mode, np.float64)
                 for mode in modes)
    if needed <= MEMORY_SHARE * available:
        return None
    return f"needs about {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available"


def _measure_mode(problem, mode, expected, backends, settings, rows):
    """Check, warm up and time every backend on ``problem`` in ``mode``; fills ``rows[(mode, name)]``."""
    ready = {}
    for backend in backends:
        row = rows[(mode, backend.name)]
        reason = backend.unsupported_reason(problem.case, mode)
        if reason:
            row.update(status="unsupported", reason=reason)
            continue
        try:
            prepared = _warm_up_and_check(backend, problem, mode, expected, settings, row)
        except Exception as error:  # a backend failing must not stop the sweep
            row.update(status="error", reason=f"{type(error).__name__}: {error}".splitlines()[0])
            continue
        if prepared:
            ready[backend.name] = prepared
    for name, (samples, idle_calls, barriers) in _time_interleaved(ready, settings.repeats).items():
        row = rows[(mode, name)]
        row.update(_summary(samples, idle_calls, barriers, ready[name][1], row["first_call_s"]))


def measure_case(case, modes, backends, settings):
    """Rows (one per backend and mode of ``modes`` the case allows) for one case."""
    case_modes = [mode for mode in modes if mode in case.modes]
    rows = {(mode, b.name): _base_row(case, mode, b, settings.threads) for mode in case_modes for b in backends}
    skip = _memory_reason(case, case_modes, len(backends))
    if skip:
        for row in rows.values():
            row.update(status="skipped", reason=skip)
        return list(rows.values())
    problem = make_problem(case, settings.seed)
    reference = reference_results(problem, train="train" in case_modes)
    for mode in case_modes:
        expected = reference if mode == "train" else {"output": reference["output"]}
        _measure_mode(problem, mode, expected, backends, settings, rows)
        gc.collect()  # free this mode's models before the next
    return list(rows.values())


def run_sweep(cases, modes, backends, settings):
    """Yield (case, rows) for each case, every backend on ``settings.threads`` threads."""
    with thread_limit(settings.threads):
        barrier_ns()  # compiles, or loads from the cache, the barrier's timing kernel
        for case in cases:
            yield case, measure_case(case, modes, backends, settings)
