"""``nblstm-bench``: the command line of the benchmark (Click).

    nblstm-bench                       quick sweep over every available backend (same as ``run``)
    nblstm-bench run [OPTIONS]         a preset or a custom sweep; table, JSON, CSV and PNG
    nblstm-bench plot RESULTS.json     redraw the figure of saved results
    nblstm-bench backends              list the backends and why any is unavailable
    nblstm-bench peak                  this machine's matrix-product throughput (GFLOP/s)
"""
import datetime
import pathlib
import sys
import time

import click

from . import cases as bench_cases
from .backends import BACKENDS, select_backends
from .peak import DEFAULT_SIZE, measure_peak
from .report import (
    add_derived,
    backend_table,
    backend_totals,
    describe_machine,
    document,
    format_table,
    machine_info,
    read_json,
    write_csv,
    write_json,
)
from .runner import Settings, run_sweep
from .threads import max_threads

RESULTS_ROOT = "nblstm-results"
# Sweeps of more (case, mode) units than this show a progress bar.
PROGRESS_MIN_UNITS = 2


THREADS_OPTION = click.option("--threads", type=click.IntRange(1, max_threads()), default=max_threads(),
                              show_default=True,
                              help="Threads for every backend (Numba, PyTorch, BLAS, ONNX Runtime).")


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx):
    """Benchmark LSTM throughput: nblstm against NumPy, PyTorch and ONNX Runtime on the same problems.

    Without a command, runs the quick sweep over every available backend (but nblstm-tuned) and writes
    results.json, results.csv and results.png into nblstm-results/<timestamp>/.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


def _cases(preset, sizes, bidirectional, dtype):
    """The cases to run: a preset, or the cartesian product of the sizes given (defaults elsewhere)."""
    custom = {name: values for name, values in sizes.items() if values}
    if preset and custom:
        raise click.UsageError(f"--preset {preset} cannot be combined with size options "
                               f"({', '.join('--' + n.replace('_', '-') for n in custom)}); use one or the other")
    try:
        if custom:
            chosen = bench_cases.sweep(sizes["seq_len"], sizes["batch"], sizes["input_size"], sizes["hidden_size"],
                                       sizes["layers"], sizes["proj_size"])
        else:
            chosen = bench_cases.PRESETS[preset or "quick"]
        return [case.with_options(dtype=dtype, bidirectional=bidirectional or case.bidirectional) for case in chosen]
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _output_paths(out, json_path, csv_path, plot_path):
    """{kind: path} to write: the explicit paths if any was given, else all three in the results folder."""
    explicit = {"json": json_path, "csv": csv_path, "plot": plot_path}
    if any(explicit.values()):
        return {kind: pathlib.Path(path) for kind, path in explicit.items() if path}
    timestamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = pathlib.Path(out) if out else pathlib.Path(RESULTS_ROOT) / timestamp
    return {"json": folder / "results.json", "csv": folder / "results.csv", "plot": folder / "results.png"}


def _run_units(sweep, units, label):
    """Consume the sweep generator, with a progress bar on longer sweeps; returns all rows."""
    rows = []
    if units <= PROGRESS_MIN_UNITS:
        for _, case_rows in sweep:
            rows += case_rows
        return rows
    with click.progressbar(length=units, label=label, file=sys.stderr, show_pos=True) as bar:
        for case, case_rows in sweep:
            rows += case_rows
            bar.update(len({row["mode"] for row in case_rows}), current_item=case.label)
    return rows


@main.command()
@click.option("--backend", "-b", "backend_names", multiple=True, type=click.Choice(list(BACKENDS)),
              help="Backend to run (repeatable); default: every available one but nblstm-tuned (tuning a "
                   "case takes up to a minute).")
@click.option("--mode", type=click.Choice(["fwd", "train", "both"]), default="both", show_default=True,
              help="Forward only, forward + backward to every gradient, or both.")
@click.option("--preset", type=click.Choice(list(bench_cases.PRESETS)), default=None,
              help="Named set of sizes [default: quick unless sizes are given].")
@click.option("--seq-len", multiple=True, type=click.IntRange(min=1), help="Sequence length L (repeatable).")
@click.option("--batch", multiple=True, type=click.IntRange(min=1), help="Batch size N (repeatable).")
@click.option("--input-size", multiple=True, type=click.IntRange(min=1), help="Input features H_in (repeatable).")
@click.option("--hidden-size", multiple=True, type=click.IntRange(min=1), help="Hidden size H (repeatable).")
@click.option("--layers", multiple=True, type=click.IntRange(min=1), help="Stacked layers (repeatable).")
@click.option("--proj-size", multiple=True, type=click.IntRange(min=0),
              help="Projection size, 0 = none (repeatable).")
@click.option("--bidirectional", is_flag=True, help="Make every case bidirectional.")
@click.option("--dtype", type=click.Choice(bench_cases.DTYPES), default="float32", show_default=True)
@THREADS_OPTION
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed rounds (one sample of every backend per round).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed calls after the first (compiling) call.")
@click.option("--min-sample-time", type=click.FloatRange(min=0), default=0.02, show_default=True,
              help="Shortest sample in seconds; tiny cases repeat calls within a sample.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weights and inputs.")
@click.option("--peak-size", type=click.IntRange(min=16), default=DEFAULT_SIZE, show_default=True,
              help="Matrix size of the peak measurement.")
@click.option("--out", type=click.Path(file_okay=False),
              help=f"Results folder [default: {RESULTS_ROOT}/<timestamp>].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write JSON here (when any of --json/--csv/--plot is given, only those are written).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write CSV here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write the PNG figure here.")
def run(backend_names, mode, preset, seq_len, batch, input_size, hidden_size, layers, proj_size, bidirectional,
        dtype, threads, repeats, warmup, min_sample_time, seed, peak_size, out, json_path, csv_path, plot_path):
    """Time every backend on the same cases; print a table and write JSON, CSV and a PNG figure.

    \b
    Presets:
      quick      three small sizes (the default)
      seeds      the sizes of the design documents (up to L1000, H1024)
      deepbench  the LSTM rows of Baidu DeepBench's RNN tables (input = hidden;
                 its inference rows run forward only)
      full       all of the above

    Every backend is checked against the float64 NumPy reference before it is
    timed.  GFLOP/s counts the matrix products only: 2*L*N*4H*(H_in + H_out)
    per layer and direction forward (plus 2*L*N*H*P with a projection), and
    three times that for training.
    """
    sizes = dict(seq_len=seq_len, batch=batch, input_size=input_size, hidden_size=hidden_size, layers=layers,
                 proj_size=proj_size)
    cases = _cases(preset, sizes, bidirectional, dtype)
    modes = ("fwd", "train") if mode == "both" else (mode,)
    available, unavailable = select_backends(backend_names or None)
    for name, reason in unavailable.items():
        click.echo(f"skipping {name}: {reason}", err=True)
    if not available:
        raise click.ClickException("none of the selected backends is available here")
    settings = Settings(threads=threads, repeats=repeats, warmup=warmup, min_sample_s=min_sample_time, seed=seed)
    # The peak is the CPU's: a run of GPU backends only has nothing to compare with it.
    peaks = ({d: measure_peak(d, peak_size, threads) for d in sorted({case.dtype for case in cases})}
             if any(backend.device == "cpu" for backend in available) else {})
    units = sum(len([m for m in modes if m in case.modes]) for case in cases)
    click.echo(f"{len(cases)} cases x {'/'.join(modes)} on {', '.join(b.name for b in available)}, "
               f"{threads} threads", err=True)
    start = time.perf_counter()
    rows = _run_units(run_sweep(cases, modes, available, settings), units, "benchmarking")
    add_derived(rows, {d: peak["gflops"] for d, peak in peaks.items()})
    machine = machine_info(threads)
    _print_summary(rows, peaks, machine, time.perf_counter() - start)
    results = document(rows, machine, vars(settings), peaks, backend_table(available, unavailable),
                       " ".join(["nblstm-bench"] + sys.argv[1:]),
                       dict(modes=list(modes), preset=None if any(sizes.values()) else preset or "quick"))
    _write(results, _output_paths(out, json_path, csv_path, plot_path))


def _print_summary(rows, peaks, machine, seconds):
    click.echo(format_table(rows))
    click.echo(f"machine: {describe_machine(machine)}")
    for dtype, peak in peaks.items():
        click.echo(f"matrix-product peak ({dtype}, {peak['size']}x{peak['size']}, {machine['threads']} threads): "
                   f"{peak['gflops']:.1f} GFLOP/s")
    for field, what in (("setup_s", "set-up, not in the timings (building the models; nblstm-tuned's tunes them)"),
                        ("compile_s", "first-call overhead, not in the timings (compilation, cache loading, set-up)")):
        totals = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in backend_totals(rows, field).items())
        click.echo(f"{what}: {totals}")
    click.echo(f"sweep took {seconds:.1f} s")


def _write(results, paths):
    from .plot import plot_results

    writers = {"json": lambda path: write_json(path, results), "csv": lambda path: write_csv(path, results["rows"]),
               "plot": lambda path: plot_results(results, path)}
    for kind, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        writers[kind](path)
        click.echo(f"wrote {path}")


@main.command()
@click.argument("results_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="PNG to write [default: the results file with a .png suffix].")
def plot(results_json, out):
    """Redraw the figure of saved results (a results.json of ``nblstm-bench run``)."""
    from .plot import plot_results

    try:
        results = read_json(results_json)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="RESULTS_JSON") from None
    path = pathlib.Path(out) if out else pathlib.Path(results_json).with_suffix(".png")
    plot_results(results, path)
    click.echo(f"wrote {path}")


@main.command()
def backends():
    """List the backends, what they run, and why any is unavailable here."""
    available, unavailable = select_backends()
    width = max(map(len, BACKENDS))
    for name, backend in BACKENDS.items():
        status = "available" if name not in unavailable else f"unavailable: {unavailable[name]}"
        status += "" if backend.in_default_run or name in unavailable else " (runs when named: -b " + name + ")"
        click.echo(f"{name:<{width}} {backend.device:<5} {'/'.join(backend.modes):<10} {status}")
        click.echo(f"{'':<{width}} {backend.description}")
    if not available:
        raise click.ClickException("no backend is available")


@main.command()
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(bench_cases.DTYPES),
              help="Element type (repeatable) [default: float32 and float64].")
@click.option("--size", type=click.IntRange(min=16), default=DEFAULT_SIZE, show_default=True,
              help="Square matrix size n (2 n^3 FLOPs per product).")
@THREADS_OPTION
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
def peak(dtypes, size, threads, repeats):
    """Matrix-product throughput of this machine (NumPy/BLAS GEMM): the practical ceiling for the LSTMs."""
    click.echo(f"machine: {describe_machine(machine_info(threads))}")
    for dtype in dtypes or bench_cases.DTYPES:
        result = measure_peak(dtype, size, threads, repeats)
        click.echo(f"{dtype}: {result['gflops']:.1f} GFLOP/s best, {result['median_gflops']:.1f} median "
                   f"({size}x{size} @ {size}x{size}, {threads} threads, {repeats} repeats)")
