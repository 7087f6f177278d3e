"""How long two of Numba's threads take to meet: the least each time step costs threads that split its units.

On a virtual machine this moves from minute to minute, as the hypervisor places the virtual CPUs on cores
near or far from each other, or on the two threads of one core: on this project's 2-vCPU VM 77-112 ns, 320-405
ns or 22-35 ns, while threads splitting the units of L100 N4 I32 H128 forward took 0.50-0.66, 1.03-1.20 or
0.74-0.75 ms a call and one thread about 0.73 throughout (README).  ``nblstm-bench`` times it after every
sample, so that a row tells in which state its samples ran.
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
