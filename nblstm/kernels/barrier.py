"""A spin barrier for Numba's threads, so that one parallel region can run many time steps.

Opening a parallel region and joining it at every time step costs a few
microseconds, as much as a whole step of a small LSTM.  Instead the threads of
one ``prange`` each own a part of every step and meet at a barrier after it:
an atomic counter the last arriver resets while bumping a generation number
the others spin on (about 0.3 microseconds between two cores).

A barrier is only safe when every part of the ``prange`` runs on its own
thread at the same time.  ``arrive_together`` checks that at the start: if
the parts do not all arrive within ``HANDSHAKE_SPINS`` spins (a threading
layer that ran two parts on one thread), they call the attempt off together,
and the caller falls back to one parallel region per step.

After the process sat idle, the kernel may wake a pool thread on the core of
the thread that woke it while the other core idles; a thread spinning there
then keeps it from running until the next scheduler tick (4 ms), every call
(measured: the first two calls after 0.15 s idle took 7 and 4 ms at L10 N8
H128, ``tools/idle_calls.py``).  So a thread that arrives on the core of the
first arriver moves itself to another allowed core (its affinity narrowed for
one moment, then restored), and a thread that has waited a while yields its
core at each turn instead of only pausing.

``state`` is an int64 array of ``BARRIER_STATE_SIZE`` zeros, fresh for each
parallel region; its counters sit on separate cache lines.
"""
import platform

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._config import JIT_OPTIONS, PARALLEL_JIT_OPTIONS

_COUNT, _GENERATION, _HANDSHAKE, _FIRST_CPU = 0, 8, 16, 24  # one 64-byte cache line each
BARRIER_STATE_SIZE = 32
HANDSHAKE_SPINS = 1 << 15  # 10 ms or more
SPINS_BEFORE_YIELD = 1 << 10  # about 0.3 ms of pauses, then yield the core at every turn
_CALLED_OFF = -1
_CPU_SET_WORDS = 16  # a cpu_set_t of 1024 CPUs


def _element_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def _atomic_add(typingctx, state, index, value):
    """state[index] += value atomically; returns the old value."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", pointer, args[2], "seq_cst")

    return types.int64(state, index, value), codegen


@intrinsic
def _atomic_load(typingctx, state, index):
    """state[index], read atomically."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(pointer, "seq_cst", 8)

    return types.int64(state, index), codegen


@intrinsic
def _atomic_store(typingctx, state, index, value):
    """state[index] = value, written atomically."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store_atomic(args[2], pointer, "seq_cst", 8)
        return context.get_dummy_value()

    return types.none(state, index, value), codegen


@intrinsic
def _compare_and_swap(typingctx, state, index, expected, value):
    """If state[index] == expected, set it to value; returns whether it did."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        result = builder.cmpxchg(pointer, args[2], args[3], "seq_cst", "seq_cst")
        return builder.extract_value(result, 1)

    return types.boolean(state, index, expected, value), codegen


@intrinsic
def _spin_pause(typingctx):
    """A hint to the CPU that this thread is spinning (x86 ``pause``)."""

    def codegen(context, builder, signature, args):
        if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
            pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                   "llvm.x86.sse2.pause")
            builder.call(pause, [])
        return context.get_dummy_value()

    return types.none(), codegen


def _libc(builder, name, argument_types):
    """Declaration of the C library's ``int name(argument_types)``."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), argument_types), name)


@intrinsic
def _current_cpu(typingctx):
    """The CPU this thread runs on (``sched_getcpu``; -1 where it cannot tell)."""

    def codegen(context, builder, signature, args):
        return builder.sext(builder.call(_libc(builder, "sched_getcpu", []), []), ir.IntType(64))

    return types.int64(), codegen


@intrinsic
def _yield_core(typingctx):
    """Let another thread that waits for this core run (``sched_yield``)."""

    def codegen(context, builder, signature, args):
        builder.call(_libc(builder, "sched_yield", []), [])
        return context.get_dummy_value()

    return types.none(), codegen


def _cpu_set_call(name):
    """An intrinsic ``f(mask)`` calling the C library's ``name(0, size, mask)`` on this thread
    with an int64 array of ``_CPU_SET_WORDS`` words as the cpu_set_t; returns 0 on success."""

    @intrinsic
    def call(typingctx, mask):
        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            argument_types = [ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()]
            result = builder.call(_libc(builder, name, argument_types),
                                  [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(64), _CPU_SET_WORDS * 8),
                                   builder.bitcast(data, ir.IntType(8).as_pointer())])
            return builder.sext(result, ir.IntType(64))

        return types.int64(mask), codegen

    return call


_get_affinity = _cpu_set_call("sched_getaffinity")  # the CPUs this thread may run on
_set_affinity = _cpu_set_call("sched_setaffinity")


@njit(**JIT_OPTIONS)
def _move_off_cpu(cpu):
    """Move this thread to another CPU it may run on (if any), then allow it all of them again."""
    allowed = np.zeros(_CPU_SET_WORDS, np.int64)
    if cpu < 0 or cpu >= _CPU_SET_WORDS * 64 or _get_affinity(allowed) != 0:
        return
    others = allowed.copy()
    others[cpu // 64] &= ~(1 << (cpu % 64))
    if others.any() and _set_affinity(others) == 0:
        _set_affinity(allowed)


@njit(**JIT_OPTIONS)
def _wait_a_turn(spins):
    """One turn of a wait that has lasted ``spins`` turns: a pause, later a yield of the core."""
    if spins < SPINS_BEFORE_YIELD:
        _spin_pause()
    else:
        _yield_core()


@njit(**JIT_OPTIONS)
def arrive_together(state, n_threads):
    """Whether all ``n_threads`` parts arrived at the start together (each part calls this once).

    A part that waits in vain calls the attempt off; every part then returns False.  A part that
    arrives on the first arriver's CPU moves to another one first.
    """
    cpu = _current_cpu()
    while True:
        arrived = _atomic_load(state, _HANDSHAKE)
        if arrived == _CALLED_OFF:
            return False
        if _compare_and_swap(state, _HANDSHAKE, arrived, arrived + 1):
            break
    if arrived == 0:
        _atomic_store(state, _FIRST_CPU, cpu + 1)  # 0: not known yet
    elif _atomic_load(state, _FIRST_CPU) == cpu + 1:
        _move_off_cpu(cpu)
    for spins in range(HANDSHAKE_SPINS):
        arrived = _atomic_load(state, _HANDSHAKE)
        if arrived == n_threads:
            return True
        if arrived == _CALLED_OFF:
            return False
        _wait_a_turn(spins)
    arrived = _atomic_load(state, _HANDSHAKE)
    while arrived != n_threads and not _compare_and_swap(state, _HANDSHAKE, arrived, _CALLED_OFF):
        arrived = _atomic_load(state, _HANDSHAKE)
    return arrived == n_threads


@njit(**JIT_OPTIONS)
def wait_for_all(state, n_threads):
    """Block until all ``n_threads`` parts have called it (the same number of times)."""
    generation = _atomic_load(state, _GENERATION)
    if _atomic_add(state, _COUNT, 1) == n_threads - 1:
        _atomic_store(state, _COUNT, 0)
        _atomic_add(state, _GENERATION, 1)
    else:
        spins = 0
        while _atomic_load(state, _GENERATION) == generation:
            _wait_a_turn(spins)
            spins += 1


@njit(**PARALLEL_JIT_OPTIONS)
def meet_repeatedly(state, rounds):
    """Two threads meet at ``wait_for_all`` ``rounds`` times, as threads that split every step's units do
    after each step, with nothing else to do: what each meeting costs at least (``nblstm-bench`` times it).
    ``state``: BARRIER_STATE_SIZE int64 zeros.  Returns whether the two ran together (else they did not meet)."""
    together = np.zeros(2, np.bool_)
    for part in prange(2):
        together[part] = arrive_together(state, 2)
        if together[part]:
            for _ in range(rounds):
                wait_for_all(state, 2)
    return together.all()
