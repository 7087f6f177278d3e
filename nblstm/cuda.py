"""Whether nblstm can run on an NVIDIA GPU, and the engine's CUDA backend when it can.

Importing this module imports nothing of numba.cuda: that happens on the first
call, so the package imports the same with or without a GPU.  Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1`` before numba.cuda is imported) counts
as a device: everything runs, slowly, in Python threads.
"""


def unavailable_reason():
    """None when a CUDA device (or Numba's CUDA simulator) is available, else a one-line reason."""
    try:
        from numba import cuda
    except ImportError as error:
        return f"numba.cuda cannot be imported: {error}"
    if cuda.is_available():
        return None
    error = cuda.cuda_error()
    detail = " ".join(str(error).split()) if error is not None else "the driver reports no CUDA device"
    return f"Numba finds no usable CUDA GPU ({detail})"


def is_available():
    """True when nblstm can run models on device 'cuda'."""
    return unavailable_reason() is None


def backend():
    """The engine's CUDA backend (``nblstm.cuda_backend.CUDA``).

    Raises RuntimeError, with the reason, when no CUDA device is available.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"device 'cuda' was requested but no CUDA device is available: {reason}")
    from .cuda_backend import CUDA

    return CUDA
