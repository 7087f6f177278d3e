"""How near each other Numba's threads run, measured now and then, for the plans that depend on it.

Threads that split each time step's hidden units meet at a barrier after every step (``kernels.barrier``)
and then read each other's part of the step's output.  What that costs depends on where the cores sit: on
this project's 2-vCPU virtual machine (AMD EPYC, Zen 4) the hypervisor moves the vCPUs between near cores
(two threads meet in 77-112 ns), far-apart ones (320-405 ns) and the two threads of one core (22-36 ns),
for seconds to a minute at a time, and a units split that ran an L100 N4 H128 forward in 0.51 ms near took
1.04 ms far apart, where one thread took 0.73 (README, "thread states").  ``far_apart`` tells the plans
(``engine.CPUBackend.plan``) which state the threads are in, timing them again once its last timing is
``REMEASURE_SECONDS`` old while calls keep coming.
"""
import threading
import time

import numba
import numpy as np

from .kernels.barrier import BARRIER_STATE_SIZE, meet_repeatedly

# Two threads that take this long or longer to meet at the barrier count as far apart: between the near
# (77-112 ns) and far (320-405 ns) levels measured on the VM above.
FAR_APART_NS = 200
# ``far_apart`` times the threads again when its last timing is this old: the VM's states lasted from under a
# second to a minute (a 9-minute run of forced plans, 2026-11-28: near runs of 0.2-18 s, far 0.02-48 s) ...
REMEASURE_SECONDS = 1.0
# ... and it was last asked this recently: the process is busy, its threads awake.  A timing then took 38 us
# right after another and 160-250 us after 0.3 s of one-thread calls, but 7.8 ms after the process slept 0.2 s
# (the other thread waking on the core of the one that woke it): an occasional caller keeps its first answer.
AWAKE_SECONDS = 0.01
# A timing: ``MEETINGS`` meetings, after a few that wake the other thread (which the call that asked would
# wake anyway).  One that changes the answer is taken again, and the lesser counts: a thread the system took
# away for a moment slows one timing, not two.
MEETINGS = 50
BARRIER_ROUNDS = 2000


def runs_together():
    """Whether threads may run many steps in one parallel region, meeting at a barrier: every part of a
    parallel loop then needs its own thread at the same time, as Numba's OpenMP layer gives it."""
    return numba.threading_layer() == "omp" and numba.get_parallel_chunksize() == 0


def barrier_ns(rounds=BARRIER_ROUNDS):
    """Nanoseconds per meeting of two of Numba's threads at the kernels' barrier (``kernels.barrier``), over
    ``rounds`` meetings: the least each time step costs threads that split its units.  None with one thread,
    or a threading layer that does not run them together.  On a virtual machine it moves as the hypervisor
    places the CPUs (module docstring); ``nblstm-bench`` times it after every sample."""
    if numba.get_num_threads() < 2 or not runs_together():
        return None
    warm, state = np.zeros((2, BARRIER_STATE_SIZE), np.int64)  # each region needs fresh state
    if not meet_repeatedly(warm, max(1, rounds // 10)):  # wakes a thread that fell asleep (up to ms on a VM)
        return None
    start = time.perf_counter()
    meet_repeatedly(state, rounds)
    return (time.perf_counter() - start) / rounds * 1e9


class _Placement:
    """The latest ``far_apart`` answer, when it was measured and when it was last asked (``time.monotonic``)."""

    def __init__(self):
        self.far = False
        self.measured_at = self.asked_at = None
        self.lock = threading.Lock()


_latest = _Placement()


def far_apart(now=time.monotonic):
    """Whether two of Numba's threads now take ``FAR_APART_NS`` or longer to meet (``barrier_ns`` of
    ``MEETINGS``; twice, the lesser counting, where the answer changes): timed at the first call, then again
    once the last timing is ``REMEASURE_SECONDS`` old and the previous call came ``AWAKE_SECONDS`` ago or less
    (by one caller: others meanwhile take the last answer).  False where the threads cannot meet (one thread,
    or a threading layer that does not run them together), and for a caller that finds the first timing under
    way."""
    latest = _latest
    asked, latest.asked_at = latest.asked_at, now()
    if latest.measured_at is not None and (latest.asked_at - latest.measured_at < REMEASURE_SECONDS
                                           or latest.asked_at - asked > AWAKE_SECONDS):
        return latest.far
    if not latest.lock.acquire(blocking=False):
        return latest.far
    try:
        meeting = barrier_ns(MEETINGS)
        if meeting is not None and (meeting >= FAR_APART_NS) != latest.far:
            again = barrier_ns(MEETINGS)
            meeting = None if again is None else min(meeting, again)
        latest.far = meeting is not None and meeting >= FAR_APART_NS
        latest.measured_at = now()
    finally:
        latest.lock.release()
    return latest.far
