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

``state`` is an int64 array of ``BARRIER_STATE_SIZE`` zeros, fresh for each
parallel region; its counters sit on separate cache lines.
"""
import platform

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._config import JIT_OPTIONS

_COUNT, _GENERATION, _HANDSHAKE = 0, 8, 16  # one 64-byte cache line each
BARRIER_STATE_SIZE = 24
HANDSHAKE_SPINS = 1 << 15  # about 10 ms
_CALLED_OFF = -1


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


@njit(**JIT_OPTIONS)
def arrive_together(state, n_threads):
    """Whether all ``n_threads`` parts arrived at the start together (each part calls this once).

    A part that waits in vain calls the attempt off; every part then returns False.
    """
    while True:
        arrived = _atomic_load(state, _HANDSHAKE)
        if arrived == _CALLED_OFF:
            return False
        if _compare_and_swap(state, _HANDSHAKE, arrived, arrived + 1):
            break
    for _ in range(HANDSHAKE_SPINS):
        arrived = _atomic_load(state, _HANDSHAKE)
        if arrived == n_threads:
            return True
        if arrived == _CALLED_OFF:
            return False
        _spin_pause()
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
        while _atomic_load(state, _GENERATION) == generation:
            _spin_pause()
