"""Time the plan the rules make where the threads run near each other against the one they make where they run
far apart, in whichever state the machine is in, and sort the samples by that state.

For each case (L, N, H; input ``--input-size``) two models are pinned to the two plans
(``engine.CPUBackend.plan`` with ``far`` false, then true) and called in turn for about
``--sample-time`` seconds each, again and again for ``--seconds``; two threads meeting at the kernels' barrier
(``placement.barrier_ns``) after each sample say the state it ran in (far apart from ``placement.FAR_APART_NS``).
Prints each case's medians in each state: the rules are right where each state's plan is the faster in it.

    python tools/plans_by_state.py --seconds 480 --case 100,4,128 --case 100,1,128 --case 100,1,128,train
"""
import argparse
import collections
import time

import numpy as np

import nblstm
from nblstm import engine, placement


def _case(text):
    seq_len, batch, hidden, *mode = text.split(",")
    if mode not in ([], ["train"]):
        raise argparse.ArgumentTypeError(f"a case is L,N,H or L,N,H,train; got {text!r}")
    return int(seq_len), int(batch), int(hidden), mode == ["train"]


class _Pinned(engine.Trial):
    """A work space's trial (as ``nblstm.tune`` sets one) that runs every call on one plan."""

    def __init__(self, plan):
        super().__init__()
        self.pinned = plan

    def plan(self, key, arguments, plans_for):
        return self.pinned


def pinned_call(seq_len, batch, hidden, training, input_size, plan, x):
    """(model, call): a model whose calls run on ``plan`` whatever the state, and a function calling it on x,
    with its backward in training mode."""
    model = nblstm.LSTM(input_size, hidden, seed=0).train(training)
    model._workspace.trial = _Pinned(plan)

    def call():
        output = model(x)[0]
        if training:
            model.backward(np.ones_like(output))

    return model, call


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=_case, action="append", help="L,N,H or L,N,H,train (repeatable)")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--sample-time", type=float, default=0.003)
    args = parser.parse_args(argv)
    cases = args.case or [(100, 4, 128, False), (100, 1, 128, False)]
    if placement.barrier_ns() is None:
        parser.error("the threads here do not meet at a barrier (one thread, or a threading layer that does not run "
                     "them together)")
    rng = np.random.default_rng(0)
    runs = []
    for seq_len, batch, hidden, training in cases:
        x = rng.standard_normal((seq_len, batch, args.input_size)).astype(np.float32)
        plans = [engine.CPU.plan(seq_len, batch, hidden, hidden, training, True, args.input_size, far=far)
                 for far in (False, True)]
        runs.append((plans, [pinned_call(seq_len, batch, hidden, training, args.input_size, plan, x)[1]
                             for plan in plans]))
    samples = collections.defaultdict(list)  # (case index, state, plan index): seconds per call
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline:
        for case, (_, calls) in enumerate(runs):
            for which, call in enumerate(calls):
                call()
                count, start = 0, time.perf_counter()
                while time.perf_counter() - start < args.sample_time or not count:
                    call()
                    count += 1
                seconds = (time.perf_counter() - start) / count
                state = "far" if placement.barrier_ns(placement.MEETINGS * 8) >= placement.FAR_APART_NS else "near"
                samples[case, state, which].append(seconds)
    for case, ((seq_len, batch, hidden, training), (plans, _)) in enumerate(zip(cases, runs)):
        print(f"L{seq_len} N{batch} I{args.input_size} H{hidden} {'training' if training else 'forward'}: "
              f"near plan {plans[0]}, far plan {plans[1]} (threads, together, by batch, packed)")
        for state in ("near", "far"):
            near, far = samples[case, state, 0], samples[case, state, 1]
            if near and far:
                print(f"  threads {state:4}: near plan {np.median(near) * 1e3:.3f} ms, far plan "
                      f"{np.median(far) * 1e3:.3f} ms ({min(len(near), len(far))} samples each)")


if __name__ == "__main__":
    main()
