"""How long two of Numba's threads take to meet: the least each time step costs threads that split its units.

On a virtual machine this moves from minute to minute, as the hypervisor places the virtual CPUs on cores
near or far from each other (on this project's 2-vCPU VM about 100 ns or 500 ns; threads splitting the units
of L100 N4 H128 then took 0.51 or 1.0-1.2 ms a call, one thread 0.71 throughout). ``nblstm-bench`` times it
after every sample, so that a row tells in which state its samples ran.
"""
import time

import numba
import numpy as np

from ..engine import runs_together
from ..kernels.barrier import BARRIER_STATE_SIZE, meet_repeatedly

ROUNDS = 2000


def barrier_ns(rounds=ROUNDS):
    """Nanoseconds per meeting of two of Numba's threads at nblstm's barrier (``kernels.barrier``), over
    ``rounds`` meetings; None with one thread, or a threading layer that does not run them together."""
    if numba.get_num_threads() < 2 or not runs_together():
        return None
    state = np.zeros(BARRIER_STATE_SIZE, np.int64)
    start = time.perf_counter()
    if not meet_repeatedly(state, rounds):
        return None
    return (time.perf_counter() - start) / rounds * 1e9
