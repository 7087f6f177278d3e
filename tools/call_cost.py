"""Split the time of an inference call into a fixed cost per call and a cost per time step.

Times ``model(x)`` (eval mode, warm) at two sequence lengths and prints the
median of each, the cost per step (the slope) and the fixed cost (the
intercept): what dominates small models, where nblstm-bench's throughput
figures hide it.

    python tools/call_cost.py --hidden-size 20 --batch 1
"""
import argparse
import time

import numpy as np

from nblstm import LSTM


def median_seconds(call, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=20)
    parser.add_argument("--hidden-size", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--short", type=int, default=100, help="shorter seq_len")
    parser.add_argument("--long", type=int, default=1000, help="longer seq_len")
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args(argv)

    model = LSTM(args.input_size, args.hidden_size, dtype=args.dtype, seed=0).eval()
    rng = np.random.default_rng(0)
    medians = {}
    for seq_len in (args.short, args.long):
        x = rng.standard_normal((seq_len, args.batch, args.input_size)).astype(args.dtype)
        model(x)  # compile or load the kernels, warm the caches
        medians[seq_len] = median_seconds(lambda x=x: model(x), args.repeats)
        print(f"seq_len {seq_len}: {medians[seq_len] * 1e6:.1f} us per call")
    per_step = (medians[args.long] - medians[args.short]) / (args.long - args.short)
    fixed = medians[args.short] - args.short * per_step
    print(f"per step {per_step * 1e9:.0f} ns, fixed cost per call {fixed * 1e6:.1f} us "
          f"(hidden {args.hidden_size}, batch {args.batch}, input {args.input_size}, {args.dtype})")


if __name__ == "__main__":
    main()
