"""Results of a sweep: derived metrics, the machine they came from, table, JSON and CSV.

A results document (JSON) holds ``format``, ``created``, ``command``,
``machine`` (CPU model and identity, caches, SIMD width of the kernels, cores, thread count, library
versions, BLAS),
``settings``, ``peak`` ({dtype: matrix-product ceiling}), ``backends``
({name: availability and reason}) and ``rows``: one per (case, mode, backend)
with the configuration, ``status`` (ok, mismatch, unsupported, error, skipped)
and ``reason``, and for timed rows the seconds per call (``median_s``,
quartiles ``q1_s``/``q3_s``, ``min_s``, ``max_s``), ``idle_call_s`` (one
call after the process sat idle, median; see ``runner``), ``first_call_s``,
``compile_s``, ``max_error`` against the float64 reference, and the derived
``seq_per_s`` (sequences per second = batch / median_s), ``gflops``
(``flops`` / median_s, see ``nblstm.bench.cases``), ``pct_peak`` (of the
matrix-product peak in the row's dtype; CPU backends only) and ``speedup``
(``baseline``'s median time / this median time: > 1 is faster).
"""
import csv
import datetime
import importlib.metadata
import json
import os
import platform

from .backends import BACKENDS, BASELINES

FORMAT = "nblstm-bench/1"
LIBRARIES = ("nblstm", "numpy", "numba", "llvmlite", "scipy", "torch", "onnx", "onnxruntime", "threadpoolctl")
CSV_COLUMNS = (
    "case", "mode", "backend", "device", "dtype", "seq_len", "batch", "input_size", "hidden_size", "num_layers",
    "bidirectional", "proj_size", "threads", "status", "reason", "median_s", "q1_s", "q3_s", "min_s", "max_s",
    "samples", "calls_per_sample", "idle_call_s", "barrier_ns", "setup_s", "plan", "first_call_s", "compile_s",
    "max_error", "flops", "seq_per_s", "gflops", "pct_peak", "baseline", "speedup",
)


def _cpuinfo(path="/proc/cpuinfo"):
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields = {}
    try:
        with open(path) as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model():
    """The CPU's marketing name where the OS tells it, else the architecture."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_identity(cpuinfo=None):
    """vendor, family, model and stepping (as /proc/cpuinfo gives them; None elsewhere): a virtual
    machine often names its CPU only "AMD EPYC", and these tell its generations apart (family 25
    model 17 is a Zen 4 EPYC, family 26 a Zen 5)."""
    fields = _cpuinfo() if cpuinfo is None else cpuinfo
    keys = {"vendor": "vendor_id", "family": "cpu family", "model": "model", "stepping": "stepping"}
    identity = {key: fields.get(name) for key, name in keys.items()}
    for key in ("family", "model", "stepping"):
        identity[key] = int(identity[key]) if (identity[key] or "").isdigit() else None
    return identity


_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _read_text(path):
    with open(path) as handle:
        return handle.read().strip()


def cpu_caches(root="/sys/devices/system/cpu/cpu0/cache"):
    """{"L1d", "L2", "L3": bytes} of the first CPU's data caches, as Linux's sysfs lists them ({} elsewhere;
    a virtual machine lists its host's L3, which it shares)."""
    caches = {}
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return caches
    for entry in entries:
        try:
            level, kind, size = (_read_text(os.path.join(root, entry, name)) for name in ("level", "type", "size"))
        except OSError:
            continue
        if kind == "Instruction" or not size:
            continue
        unit = _SIZE_UNITS.get(size[-1], 1)
        digits = size[:-1] if size[-1] in _SIZE_UNITS else size
        if digits.isdigit():
            caches["L1d" if level == "1" else f"L{level}"] = int(digits) * unit
    return caches


def _kernel_vector_bits():
    from ..kernels.simd import VECTOR_BITS

    return VECTOR_BITS


def describe_machine(machine):
    """One line on the CPU of a ``machine_info`` for the printed summary."""
    identity = machine.get("cpu_id") or {}
    parts = [machine.get("cpu", "?")]
    if identity.get("family") is not None:
        parts[0] += f" (family {identity['family']} model {identity['model']})"
    caches = machine.get("caches") or {}
    parts += [f"{name} {size / 2**20:g} MiB" for name, size in caches.items() if name != "L1d"]
    parts.append(f"{machine.get('vector_bits')}-bit vectors in nblstm's kernels")
    threads = machine.get("threads")
    parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
    return ", ".join(parts)


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _blas_pools():
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "version", "num_threads", "prefix")
    return [{key: pool.get(key) for key in keys} for pool in threadpool_info()]


def _numba_threading_layer():
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


def machine_info(threads):
    """Where the numbers come from: CPU, cores, thread count, OS, library versions, BLAS pools."""
    return {
        "cpu": cpu_model(),
        "cpu_id": cpu_identity(),
        "caches": cpu_caches(),
        "vector_bits": _kernel_vector_bits(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numba_threading_layer": _numba_threading_layer(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "blas": _blas_pools(),
    }


def backend_table(available, unavailable):
    """{name: {available, reason, device, description}} for every backend considered."""
    table = {b.name: {"available": True, "reason": None} for b in available}
    table.update({name: {"available": False, "reason": reason} for name, reason in unavailable.items()})
    for name, entry in table.items():
        entry.update(device=BACKENDS[name].device, description=BACKENDS[name].description)
    return table


def add_derived(rows, peaks):
    """Fill seq_per_s, gflops, pct_peak, baseline and speedup of the timed rows (in place).

    peaks: {dtype: GFLOP/s}; the speed-up baseline of a row is the first backend of BASELINES[its
    device] timed in its (case, mode, dtype) group.
    """
    timed = [row for row in rows if row["status"] == "ok" and row.get("median_s")]
    medians = {(r["case"], r["mode"], r["dtype"], r["backend"]): r["median_s"] for r in timed}
    for row in timed:
        row["seq_per_s"] = row["batch"] / row["median_s"]
        row["gflops"] = row["flops"] / row["median_s"] / 1e9
        peak = peaks.get(row["dtype"])
        row["pct_peak"] = 100.0 * row["gflops"] / peak if peak and row["device"] == "cpu" else None
        group = (row["case"], row["mode"], row["dtype"])
        baseline = next((name for name in BASELINES[row["device"]] if group + (name,) in medians), None)
        row["baseline"] = baseline
        row["speedup"] = medians[group + (baseline,)] / row["median_s"] if baseline else None
    return rows


def document(rows, machine, settings, peaks, backends, command, extra_settings=None):
    return {
        "format": FORMAT,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "settings": dict(settings, **(extra_settings or {})),
        "peak": peaks,
        "backends": backends,
        "rows": rows,
    }


def _plain(value):
    """JSON form of NumPy scalars."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(path, results):
    with open(path, "w") as handle:
        json.dump(results, handle, indent=1, default=_plain, allow_nan=False)


def read_json(path):
    """A results document written by ``write_json``; ValueError when the file is not one."""
    with open(path) as handle:
        try:
            results = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON: {error}") from None
    if not isinstance(results, dict) or results.get("format") != FORMAT or "rows" not in results:
        raise ValueError(f"{path} is not an nblstm-bench results file (expected format {FORMAT!r})")
    return results


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _number(value, digits=3):
    if value is None:
        return "-"
    if value >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _table_cells(row):
    if row["status"] != "ok":  # no figures: the first four cells, then the status
        return [row["case"], row["dtype"], row["mode"], row["backend"]] + [""] * (len(TABLE_HEADER) - 5) + [row["status"]]
    ms = 1e3
    speedup = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
    return [row["case"], row["dtype"], row["mode"], row["backend"], _number(row["median_s"] * ms),
            f"{_number(row['q1_s'] * ms)}-{_number(row['q3_s'] * ms)}", _number(row["idle_call_s"] * ms),
            _number(row["seq_per_s"]), _number(row["gflops"]), _number(row["pct_peak"], 2), speedup,
            _number(row.get("barrier_ns")), "ok"]


TABLE_HEADER = ["case", "dtype", "mode", "backend", "median ms", "IQR ms", "idle ms", "seq/s", "GFLOP/s", "% peak",
                "speed-up", "barrier ns", "status"]


def format_table(rows):
    """A fixed-width text table, one line per row, then one line per distinct reason a backend was not timed."""
    lines = [TABLE_HEADER] + [_table_cells(row) for row in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(TABLE_HEADER))]
    text = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    baselines = sorted({row["baseline"] for row in rows if row.get("baseline")})
    if baselines:
        text.append(f"speed-up = {' or '.join(baselines)} median time / backend median time (> 1: faster)")
    if any(row["status"] == "ok" for row in rows):
        text.append("idle ms = one call after the process sat idle for a moment (threads asleep), not in the median")
    if any(row.get("barrier_ns") is not None for row in rows):
        text.append("barrier ns = two threads meeting, right after each sample (median): on a virtual machine, "
                    "several times its usual value means the CPUs sat far apart, a fraction of it two threads of one "
                    "core; both slow down two-thread calls")
    reasons = dict.fromkeys(f"{r['backend']} {r['mode']}: {r['status']}: {r['reason']}"
                            for r in rows if r["status"] != "ok")
    return "\n".join(text + list(reasons))


def backend_totals(rows, field):
    """{backend: ``field`` of its rows summed, seconds}: ``compile_s``, the first-call overhead (compilation,
    cache loading, lazy set-up), or ``setup_s``, building the models (nblstm-tuned's: tuning them too)."""
    totals = {}
    for row in rows:
        if row.get(field) is not None:
            totals[row["backend"]] = totals.get(row["backend"], 0.0) + row[field]
    return totals
