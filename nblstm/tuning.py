"""``tune``: time every plan the CPU kernels can run a model's calls of one shape with, and keep the fastest.

How the kernels split a call between threads (the batch, or every step's hidden units) and whether they
repack the weights follow thresholds measured on a 2-core machine (``engine.CPUBackend.plan``); on other
machines the crossovers move.  ``tune`` measures them instead, as ``torch.backends.cudnn.benchmark``
does for cuDNN's algorithms, but only when asked, for the shape asked.
"""
import copy
import numbers
import time
import warnings
from typing import NamedTuple

import numpy as np

from . import engine
from .api import LSTM, LSTMCell
from .placement import barrier_ns

# Tuning keeps the default plan, and warns, where the threads' meeting time (``barrier_ns``, after each sample)
# moved by more than this factor while it ran (``_steady``): the machine moved the threads, as this project's 2-vCPU VM does
# between three levels (77-112 ns near, 320-405 ns far apart, 22-35 ns on one core's two threads; README), and
# a plan timed in one state can lose in another (two-thread calls of L100 N4 H128 took 0.50-0.66, 1.05-1.15 and
# 0.74-0.78 ms in them, one thread 0.73 throughout).
STEADY_BARRIER_RATIO = 2.0


class PlanTiming(NamedTuple):
    """One plan's median time in ``tune``."""

    threads: int  # threads the call runs on
    split: str  # what they split: "batch", "units" (each step's hidden units) or "none" (one thread)
    packed: bool  # whether the kernels run on weights packed for their register tiles
    seconds: float  # median time of a call (forward, and backward in training mode)
    default: bool  # the plan the model runs without tuning
    kept: bool  # the plan the model runs such calls with from now on

    def describe(self):
        """The plan in words, e.g. "2 threads splitting each step's units, weights packed (the default)"."""
        split = {"none": "", "batch": " splitting the batch", "units": " splitting each step's units"}[self.split]
        return (f"{self.threads} thread{'s' if self.threads > 1 else ''}{split}, weights "
                f"{'packed' if self.packed else 'as they are'}{' (the default)' if self.default else ''}")


def tune(model, input, hx=None, *, rounds=5, min_sample_time=0.002, margin=0.1):
    """Time every plan the kernels can run ``model(input, hx)`` with and keep the fastest for the model's
    calls of that kind: the same input shape (batch and sequence length), mode (eval, or training:
    forward and backward are timed together) and thread settings, including, where a step's units may
    be split, whether the threads run far apart (``placement.far_apart``: in the other state the
    default plan runs); one-step calls with a state and from zero states apart.

    Each plan runs ``rounds`` times in turn, each time a call to set it up and then as many as take
    ``min_sample_time`` seconds (at least one: a call of 1 s, on 6 plans, 5 rounds, costs a minute), and the
    medians decide: the fastest plan replaces the default one (``engine.CPUBackend.plan``'s,
    from thresholds measured over many runs) only where its median is ``margin`` (a fraction) lower,
    so that a few seconds' noise does not.  Tuning changes no results beyond rounding (the sums may run
    in another order), nor the model's gradients, pending backward passes or dropout random stream.
    Where the threads' meeting time (``barrier_ns``, after each sample) moved by more than
    ``STEADY_BARRIER_RATIO`` meanwhile, the default is kept and a RuntimeWarning says why.
    The choice is kept for the model's lifetime, in its workspace: ``to(device)`` and ``freeze`` start
    without it (tune the frozen copy itself).  Returns the ``PlanTiming`` of every plan, fastest first.

    ``model``: an ``LSTM`` or ``LSTMCell`` on the CPU; ``input`` and ``hx`` as its call takes them.
    """
    if not isinstance(model, (LSTM, LSTMCell)):
        raise TypeError(f"tune takes an nblstm LSTM or LSTMCell (in a Sequential, tune the LSTM with the input it "
                        f"takes: nblstm.tune(model[0], x)), got {type(model).__name__}")
    if model.device != "cpu":
        raise ValueError(f"tune: the model is on {model.device!r}; tune chooses between the CPU kernels' plans")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"tune: rounds must be an integer of at least 1, got {rounds!r}")
    if not (_is_real(min_sample_time) and min_sample_time >= 0):
        raise ValueError(f"tune: min_sample_time must be 0 or more seconds, got {min_sample_time!r}")
    if not (_is_real(margin) and 0 <= margin < 1):
        raise ValueError(f"tune: margin must be a fraction from 0 to below 1, got {margin!r}")
    call = _timed_call(model, input, hx)
    workspace = model._workspace
    workspace.trial = trial = engine.Trial()
    try:
        call()  # checks the input as the model's call does, and gives the trial the call's plans
        plans = trial.plans
        start = time.perf_counter()
        call()  # the default plan's, compiled: it sizes the samples
        calls = max(1, int(min_sample_time / max(time.perf_counter() - start, 1e-9)))
        samples = [[] for _ in plans]
        meetings = []
        for _ in range(rounds):
            for index, times in enumerate(samples):
                trial.index = index
                call()  # this plan's first call of the round makes its work arrays, and wakes its threads
                start = time.perf_counter()
                for _ in range(calls):
                    call()
                times.append((time.perf_counter() - start) / calls)
                meetings.append(barrier_ns())
    finally:
        workspace.trial = None
    medians = [float(np.median(times)) for times in samples]
    fastest = int(np.argmin(medians))
    steady, low, high = _steady(meetings)
    kept = fastest if steady and medians[fastest] <= (1 - margin) * medians[0] else 0  # plans[0]: the default
    if not steady:
        warnings.warn(f"tune: the threads took {low:.0f} to {high:.0f} ns to meet (a tenth left out at each end) while "
                      "it timed the plans: the machine moved them (a virtual machine placing its CPUs near and far "
                      "apart), or another process took a core, so the timings need not hold and the default plan was "
                      "kept; tune again when they are steady (tools/thread_states.py shows them)",
                      RuntimeWarning, stacklevel=2)
    workspace.plans[trial.key] = plans[kept]
    timings = [PlanTiming(threads, _split(threads, by_batch), pack_weights, seconds, index == 0, index == kept)
               for index, ((threads, _, by_batch, pack_weights), seconds) in enumerate(zip(plans, medians))]
    return sorted(timings, key=lambda timing: timing.seconds)


def _steady(meetings):
    """(steady, low, high): whether the meeting times after the samples (``barrier_ns``; None: one thread) stayed
    within STEADY_BARRIER_RATIO, leaving out a tenth at each end: a lone slow meeting (the hypervisor taking a CPU
    away for a moment) moves no plan's median, a tenth of them in another state can."""
    if None in meetings:
        return True, None, None
    ordered = sorted(meetings)
    cut = len(ordered) // 10
    low, high = ordered[cut], ordered[-1 - cut]
    return high <= STEADY_BARRIER_RATIO * low, low, high


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _split(threads, by_batch):
    if threads == 1:
        return "none"
    return "batch" if by_batch else "units"


def _timed_call(model, input, hx):
    """A function making ``model``'s call on ``input`` and ``hx`` (and in training mode its backward) on a
    shallow copy with its own gradients, tapes and random stream: the model's own stay as they were."""
    trial = copy.copy(model)
    trial.__dict__.update(_grads={name: np.zeros_like(grad) for name, grad in model._grads.items()},
                          _rng=copy.deepcopy(model._rng))
    trial._drop_tapes()
    if not model.training:
        return lambda: trial(input, hx)
    grad = []

    def call():
        result = trial(input, hx)
        first = result[0]  # LSTM: output; LSTMCell: h'
        if not grad:
            grad.append(np.ones_like(first))
        trial.backward(grad[0])

    return call
