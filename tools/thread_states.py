"""Watch how near each other the machine puts Numba's threads, and what that does to a two-thread call.

Every ``--pause`` seconds, ``--samples`` times: the call (L, N, H_in, H, forward) on the rule's plan and on
one thread, each timed over ``--calls`` calls, then two threads meeting at the kernels' barrier
(``nblstm.tuning.barrier_ns``, right after the calls, threads awake).  Prints a line per sample, then
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
from nblstm.tuning import barrier_ns


def _per_call_ms(model, x, calls):
    model(x)
    start = time.perf_counter()
    for _ in range(calls):
        model(x)
    return (time.perf_counter() - start) / calls * 1e3


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
        plan = engine.CPU.plan(args.seq_len, args.batch, args.hidden_size, args.hidden_size, False, True,
                               args.input_size)
        print(f"L{args.seq_len} N{args.batch} I{args.input_size} H{args.hidden_size} forward, plan {plan} "
              f"(threads, together, by batch, packed), {args.threads} threads")
        for sample in range(args.samples):
            if sample:
                time.sleep(args.pause)
            with thread_limit(1):
                one_thread = _per_call_ms(model, x, args.calls)
            threads = _per_call_ms(model, x, args.calls)
            rows.append((barrier_ns(), threads, one_thread))
            print(f"{time.strftime('%H:%M:%S')} plan {threads:.3f} ms, barrier right after {rows[-1][0]:.0f} ns, "
                  f"one thread {one_thread:.3f} ms", flush=True)
    print("sorted by the barrier: ns, plan ms, one thread ms")
    for meeting, threads, one_thread in sorted(rows):
        print(f"{meeting:8.0f} {threads:8.3f} {one_thread:8.3f}")


if __name__ == "__main__":
    main()
