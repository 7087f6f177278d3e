"""Watch how near each other the machine puts Numba's threads, and what that does to a two-thread call.

Every ``--pause`` seconds, ``--samples`` times: the call (L, N, H_in, H, forward) with its threads splitting
each step's units, on the rule's plan (which follows the threads' state, ``nblstm.placement``) and on one
thread, each timed over ``--calls`` calls, then two threads meeting at the kernels' barrier
(``nblstm.placement.barrier_ns``, right after the calls, threads awake).  Prints a line per sample, then
the samples sorted by that meeting time.  On a virtual machine the meetings fall into a few levels (cores
near each other, far apart, two threads of one core) and the two-thread times follow them.

    python tools/thread_states.py --seq-len 100 --batch 4 --hidden-size 128 --samples 60 --pause 2
"""
import argparse
import time

import numpy as np

import nblstm
from nblstm import engine
from nblstm.bench.threads import thread_limit
from nblstm.placement import barrier_ns


def _per_call_ms(model, x, calls):
    model(x)
    start = time.perf_counter()
    for _ in range(calls):
        model(x)
    return (time.perf_counter() - start) / calls * 1e3


def _splitting_units(model, x):
    """``model``, its calls pinned to the plan whose threads split each step's units (packed weights where
    there is one), as ``nblstm.tune`` pins them while it times a plan."""
    trial = model._workspace.trial = engine.Trial()
    model(x)
    units = [index for index, (threads, _, by_batch, _) in enumerate(trial.plans) if threads > 1 and not by_batch]
    trial.index = max(units, key=lambda index: trial.plans[index][3])
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    x = np.random.default_rng(0).standard_normal((args.seq_len, args.batch, args.input_size)).astype(np.float32)
    model = nblstm.LSTM(args.input_size, args.hidden_size, seed=0).eval()
    rows = []
    with thread_limit(args.threads):
        if barrier_ns() is None:
            parser.error(f"{args.threads} thread(s) here do not meet at a barrier (one thread, or a threading layer "
                         "that does not run them together)")
        units = _splitting_units(nblstm.LSTM(args.input_size, args.hidden_size, seed=0).eval(), x)
        print(f"L{args.seq_len} N{args.batch} I{args.input_size} H{args.hidden_size} forward, units split "
              f"{units._workspace.trial.plans[units._workspace.trial.index]} (threads, together, by batch, packed), "
              f"{args.threads} threads")
        for sample in range(args.samples):
            if sample:
                time.sleep(args.pause)
            with thread_limit(1):
                one_thread = _per_call_ms(model, x, args.calls)
            split = _per_call_ms(units, x, args.calls)
            rule = _per_call_ms(model, x, args.calls)
            rows.append((barrier_ns(), split, rule, one_thread))
            print(f"{time.strftime('%H:%M:%S')} units split {split:.3f} ms, rule's plan {rule:.3f} ms, barrier right "
                  f"after {rows[-1][0]:.0f} ns, one thread {one_thread:.3f} ms", flush=True)
    print("sorted by the barrier: ns, units split ms, rule's plan ms, one thread ms")
    for meeting, split, rule, one_thread in sorted(rows):
        print(f"{meeting:8.0f} {split:8.3f} {rule:8.3f} {one_thread:8.3f}")


if __name__ == "__main__":
    main()
