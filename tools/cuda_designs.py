"""Time the two CUDA recurrence designs (one persistent launch, or launches per step) side by side.

    python tools/cuda_designs.py --hidden-size 128 --hidden-size 512 --batch 1 --batch 8 --batch 64

For each size, forward (eval) and training (forward + backward) calls with each
design forced, alternated in one process on device arrays; prints the median
of each and which design nblstm picks by itself (``PERSISTENT_MAX_BATCH``).
"persistent" falls back to per-step launches where the weights do not fit on
chip; the table says when it did.
"""
import argparse
import time

import numpy as np
from numba import cuda

from nblstm import LSTM, cuda_backend
from nblstm.kernels import cuda_forward

DESIGNS = {"persistent": 10**9, "per_step": -1}  # PERSISTENT_MAX_BATCH that forces each


class CountedKernel:
    """Counts the launches of a kernel and passes everything else through."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getattr__(self, attribute):
        return getattr(self.kernel, attribute)

    def __getitem__(self, launch_config):
        self.launches += 1
        return self.kernel[launch_config]


def timed(call):
    cuda.synchronize()
    start = time.perf_counter()
    call()
    cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, action="append")
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    default_max_batch = cuda_backend.PERSISTENT_MAX_BATCH
    counted = cuda_forward.forward_persistent = CountedKernel(cuda_forward.forward_persistent)
    rng = np.random.default_rng(0)
    print(f"{'L':>5} {'N':>4} {'I':>5} {'H':>5}  mode   persistent ms  per-step ms  ratio  nblstm picks")
    for hidden in args.hidden_size or [128, 512]:
        for batch in args.batch or [1, 8, 64]:
            x = cuda.to_device(rng.standard_normal((args.seq_len, batch, args.input_size)).astype(args.dtype))
            grad = cuda.to_device(np.ones((args.seq_len, batch, hidden), args.dtype))
            for mode in ("fwd", "train"):
                # A model per design: a model keeps the plan of its first call for each input shape.
                models = {design: LSTM(args.input_size, hidden, dtype=args.dtype, seed=0, device="cuda")
                          for design in DESIGNS}

                def call(design, mode=mode, models=models, x=x, grad=grad):
                    cuda_backend.PERSISTENT_MAX_BATCH = DESIGNS[design]
                    model = models[design].train(mode == "train")
                    model.zero_grad()
                    model(x)
                    if mode == "train":
                        model.backward(grad)

                before = counted.launches
                timed(lambda: call("persistent"))  # compile and warm up
                launched = counted.launches > before
                timed(lambda: call("per_step"))
                samples = {design: [] for design in DESIGNS}
                for _ in range(args.repeats):
                    for design in DESIGNS:
                        samples[design].append(timed(lambda design=design: call(design)))
                persistent, per_step = (float(np.median(samples[design])) * 1e3 for design in DESIGNS)
                picks = "persistent" if batch <= default_max_batch and launched else "per_step"
                note = "" if launched else " (persistent did not fit: per-step ran)"
                print(f"{args.seq_len:>5} {batch:>4} {args.input_size:>5} {hidden:>5}  {mode:<5} {persistent:>13.3f} "
                      f"{per_step:>12.3f} {per_step / persistent:>6.2f}  {picks}{note}")
    cuda_backend.PERSISTENT_MAX_BATCH = default_max_batch


if __name__ == "__main__":
    main()
