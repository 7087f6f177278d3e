"""Figures of a results document: throughput per backend across sizes, and speed-ups.

One PNG, one row of two panels per (mode, dtype): left, GFLOP/s of every
backend for each case (median, with bars over the interquartile range of the
times; cases ordered by FLOPs per call, log scale, with the machine's
matrix-product peak as a dashed line); right, each backend's speed-up
over the baseline (PyTorch CPU, or NumPy without it; PyTorch CUDA for GPU
backends; log scale, 1 = as fast).
Drawn on a bare ``matplotlib.figure.Figure`` (Agg), so no display is needed.
"""
from matplotlib.figure import Figure

from .backends import BACKENDS

PANEL_SIZE = (6.5, 4.0)


def _groups(rows):
    """{(mode, dtype): timed rows}, in first-seen order."""
    groups = {}
    for row in rows:
        if row["status"] == "ok" and row.get("gflops"):
            groups.setdefault((row["mode"], row["dtype"]), []).append(row)
    return groups


def _backend_order(rows):
    present = {row["backend"] for row in rows}
    return [name for name in BACKENDS if name in present] + sorted(present - set(BACKENDS))


def _case_order(rows):
    flops = {row["case"]: row["flops"] for row in rows}
    return sorted(flops, key=flops.get)


def _throughput_panel(ax, rows, cases, backends, peak):
    for name in backends:
        mine = sorted((r for r in rows if r["backend"] == name), key=lambda r: cases.index(r["case"]))
        gflops = [r["gflops"] for r in mine]
        spread = [[g - r["flops"] / r["q3_s"] / 1e9 for g, r in zip(gflops, mine)],
                  [r["flops"] / r["q1_s"] / 1e9 - g for g, r in zip(gflops, mine)]]
        ax.errorbar([cases.index(r["case"]) for r in mine], gflops, yerr=spread, marker="o", capsize=3, label=name)
    if peak:
        ax.axhline(peak, color="grey", linestyle="--", linewidth=1, label="matmul peak (CPU)")
    ax.set_yscale("log")
    ax.set_ylabel("GFLOP/s (higher is better)")


def _speedup_panel(ax, rows, cases, backends):
    compared = [name for name in backends if any(r["backend"] == name and r["baseline"] not in (None, name)
                                                 for r in rows)]
    width = 0.8 / max(1, len(compared))
    for k, name in enumerate(compared):
        bars = [(cases.index(r["case"]), r["speedup"]) for r in rows
                if r["backend"] == name and r.get("speedup") and r["baseline"] != name]
        ax.bar([x - 0.4 + (k + 0.5) * width for x, _ in bars], [s for _, s in bars], width, label=name)
    ax.axhline(1.0, color="black", linewidth=1)
    baselines = sorted({r["baseline"] for r in rows if r.get("baseline")})
    ax.set_yscale("log")
    ax.set_ylabel(f"speed-up over {' / '.join(baselines)}")


def plot_results(results, path):
    """Draw the figure of ``results`` (a document from ``nblstm.bench.report``) into ``path`` (PNG)."""
    groups = _groups(results["rows"])
    figure = Figure(figsize=(2 * PANEL_SIZE[0], PANEL_SIZE[1] * max(1, len(groups))), layout="constrained")
    if not groups:
        figure.text(0.5, 0.5, "no timed results", ha="center", va="center")
    axes = figure.subplots(len(groups), 2, squeeze=False) if groups else []
    for (mode, dtype), (left, right) in zip(groups, axes):
        rows = groups[(mode, dtype)]
        cases, backends = _case_order(rows), _backend_order(rows)
        peak = results.get("peak", {}).get(dtype, {}).get("gflops")
        _throughput_panel(left, rows, cases, backends, peak)
        _speedup_panel(right, rows, cases, backends)
        for ax, title in ((left, "throughput"), (right, "speed-up")):
            ax.set_title(f"{title}: {'forward' if mode == 'fwd' else 'training (fwd + bwd)'}, {dtype}")
            ax.set_xticks(range(len(cases)), cases, rotation=30, ha="right", fontsize=8)
            ax.grid(True, which="major", axis="y", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    machine = results.get("machine", {})
    figure.suptitle(f"nblstm-bench: {machine.get('cpu', '?')}, {machine.get('threads', '?')} threads")
    figure.savefig(path, dpi=100)
    return path
