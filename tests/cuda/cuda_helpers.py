"""Shared pieces of the CUDA tests: forcing one recurrence design, running a model forward and back."""
import numpy as np
from numba import config

import nblstm.cuda_backend as cuda_backend
from nblstm.kernels import cuda_backward, cuda_forward

SIMULATED = bool(config.ENABLE_CUDASIM)

PERSISTENT_KERNELS = ((cuda_forward, "forward_persistent"), (cuda_backward, "backward_persistent"))
PER_STEP_KERNELS = ((cuda_forward, "cell_forward_parallel"), (cuda_backward, "cell_backward_parallel"),
                    (cuda_backward, "recurrent_gradient_parallel"))


class ForbiddenKernel:
    """Stands in for a kernel that must not be launched; queries (compile, occupancy) go to the kernel."""

    def __init__(self, module, name):
        self.kernel, self.name = getattr(module, name), name

    def __getattr__(self, attribute):
        return getattr(self.kernel, attribute)

    def __getitem__(self, launch_config):
        raise AssertionError(f"{self.name} was launched, but this test forbids it")


def forbid(monkeypatch, kernels):
    """Make every (module, kernel name) in ``kernels`` fail the test if launched."""
    for module, name in kernels:
        monkeypatch.setattr(module, name, ForbiddenKernel(module, name))


def force_recurrence(monkeypatch, design):
    """Make the CUDA engine run the recurrence as ``design`` ('persistent' or 'per_step') only."""
    persistent = design == "persistent"
    monkeypatch.setattr(cuda_backend, "PERSISTENT_MAX_BATCH", 10**9 if persistent else -1)
    forbid(monkeypatch, PER_STEP_KERNELS if persistent else PERSISTENT_KERNELS)


def is_device_array(value):
    """A Numba device array (the simulator's stand-in included)."""
    return bool(getattr(value, "__cuda_ndarray__", False))


def host(value):
    return value.copy_to_host() if hasattr(value, "copy_to_host") else np.asarray(value)


def forward_backward(model, x, hx, grad_output, grad_state):
    """(output, h_n, c_n, grad_input, grad_h_0, grad_c_0) as NumPy arrays, and {name: gradient}."""
    model.zero_grad()
    output, (h_n, c_n) = model(x, hx)
    grad_input, (grad_h0, grad_c0) = model.backward(grad_output, grad_state)
    results = tuple(host(value) for value in (output, h_n, c_n, grad_input, grad_h0, grad_c0))
    return results, {name: host(grad) for name, grad in model.grads.items()}


RESULT_NAMES = ("output", "h_n", "c_n", "grad_input", "grad_h_0", "grad_c_0")
