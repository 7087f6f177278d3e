"""Time the first calls after the process sat idle, with other backends' calls in between.

Each round runs every backend in turn: a pause (``--pause``, as the harness's
0.15 s between samples), then ``--calls`` calls timed one by one.  Prints, for
nblstm, the median and maximum over the rounds of the k-th call after the
pause: what an occasional caller waits for, and how many calls it takes to
reach the busy speed.  ``--beside`` names backends of ``nblstm-bench`` that
share the process (PyTorch's OpenMP threads are Numba's own when both run).

    python tools/idle_calls.py --seq-len 10 --batch 8 --hidden-size 128 --beside torch-cpu
"""
import argparse
import time

import numpy as np

from nblstm.bench.backends import BACKENDS, make_problem
from nblstm.bench.cases import Case


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--beside", action="append", default=[], choices=sorted(BACKENDS),
                        help="another backend run in each round (repeatable)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--pause", type=float, default=0.15, help="seconds idle before each backend's calls")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    case = Case(args.seq_len, args.batch, args.input_size, args.hidden_size, modes=("fwd",))
    problem = make_problem(case)
    runs = {}
    for name in ["nblstm", *args.beside]:
        reason = BACKENDS[name].unavailable_reason()
        if reason:
            parser.error(f"{name}: {reason}")
        run = BACKENDS[name].prepare(problem, "fwd", args.threads).run
        for _ in range(50):  # compile or load the kernels, warm up
            run()
        runs[name] = run
    times = []
    for _ in range(args.rounds):
        for name, run in runs.items():
            time.sleep(args.pause)
            call_times = []
            for _ in range(args.calls):
                start = time.perf_counter()
                run()
                call_times.append(time.perf_counter() - start)
            if name == "nblstm":
                times.append(call_times)
    times = np.array(times) * 1e3
    print(f"nblstm, {case.label}, {args.threads} threads, beside {', '.join(args.beside) or 'nothing'}: "
          f"k-th call after {args.pause} s idle, ms over {args.rounds} rounds")
    print("median " + " ".join(f"{value:.3f}" for value in np.median(times, axis=0)))
    print("max    " + " ".join(f"{value:.3f}" for value in times.max(axis=0)))


if __name__ == "__main__":
    main()
