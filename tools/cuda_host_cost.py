"""Where the time of a CUDA forward call goes: the host's share, its parts, and the GPU's.

    python tools/cuda_host_cost.py        (on a machine with an NVIDIA GPU)

For a few sizes, eval calls on device arrays: the mean per call when each call
waits for the GPU and when calls run back to back; the host time per call of
the engine and of its costly parts (allocating, sizing the persistent grid,
launching the input projection and the recurrence); and, when PyTorch is
installed, the GPU time per call of each kernel (PyTorch's profiler records
every kernel of the process, Numba's too).  A call whose host time exceeds its
GPU time is bound by the host.  First the costs the parts are made of: an empty
kernel's launch, a cooperative launch, an allocation, and the two launches of a
small call split into numba-cuda's steps (configuring, typing the arguments,
flattening them into the kernel's parameters, the compiled kernel's own launch).
"""
import functools
import time
from collections import defaultdict

import numpy as np
from numba import config, cuda

from nblstm import LSTM, cuda_backend, engine
from nblstm.kernels import cuda_common, cuda_forward

# (seq_len, batch, input, hidden, recurrence design)
CASES = [(10, 1, 20, 20, "persistent"), (100, 1, 128, 512, "persistent"), (100, 8, 128, 512, "persistent"),
         (100, 64, 128, 128, "persistent"), (100, 64, 128, 128, "per_step")]
CALLS = 50

host_seconds = defaultdict(float)


def host_timed(name, function):
    """``function``, adding the host time of its calls to host_seconds[name]."""
    @functools.wraps(function)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            host_seconds[name] += time.perf_counter() - start
    return timed


class HostTimedKernel:
    """A kernel whose launches add their host time to host_seconds[name]."""

    def __init__(self, name, kernel):
        self.name, self.kernel = name, kernel

    def __getattr__(self, attribute):
        return getattr(self.kernel, attribute)

    def __getitem__(self, launch_config):
        return host_timed(self.name, self.kernel[launch_config])


def per_call_ms(call, calls, wait_each):
    """(host ms, total ms) per call of ``calls`` calls, waiting for the GPU after each or only at the end."""
    cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        call()
        if wait_each:
            cuda.synchronize()
    issued = time.perf_counter() - start
    cuda.synchronize()
    return f"{issued / calls * 1e3:.3f}", f"{(time.perf_counter() - start) / calls * 1e3:.3f}"


@cuda.jit
def empty_kernel(array):
    pass


@cuda.jit
def grid_syncs(array, syncs):
    grid = cuda.cg.this_grid()
    for _ in range(syncs):
        grid.sync()


def gpu_ms_per_kernel(call, calls):
    """{kernel: GPU ms per call} over ``calls`` calls, or a reason why not."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "PyTorch sees no GPU"
    with profile(activities=[ProfilerActivity.CUDA]) as recorded:
        for _ in range(calls):
            call()
        cuda.synchronize()
    kernels = {}
    for event in recorded.key_averages():
        gpu_us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        if gpu_us:
            name = event.key.split("[")[0].split("::")[-1]
            kernels[name] = round(gpu_us / calls / 1e3, 4)
    return kernels


def launch_costs():
    """Print the host and total time of the pieces a call is made of."""
    array = cuda.device_array(16, np.float32)
    launch = functools.partial(empty_kernel[1, 32], array)
    launch()
    grid_syncs[4, 256](array, 1)  # compiled before the timings, not in the first row
    print("empty kernel, 1 argument (host ms, total ms per call): back to back", per_call_ms(launch, 200, False),
          "waiting for each", per_call_ms(launch, 200, True))
    for syncs in (0, 10, 100):
        print(f"cooperative launch of 4 x 256 threads, {syncs} grid syncs, waiting for each:",
              per_call_ms(functools.partial(grid_syncs[4, 256], array, syncs), 100, True))
    print("cuda.device_array((10, 1, 20)) and its release:",
          per_call_ms(functools.partial(cuda.device_array, (10, 1, 20), np.float32), 200, False))


class CapturingKernel:
    """A kernel that records each launch's (launch configuration, arguments) in ``launches``, then runs it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getattr__(self, attribute):  # persistent_grid types the arguments and compiles through it
        return getattr(self.kernel, attribute)

    def __getitem__(self, launch_config):
        def launch(*args):
            self.launches.append((launch_config, args))
            self.kernel[launch_config](*args)
        return launch


def launch_parts(kernel, launch_config, args, calls):
    """{part: host us per launch} of ``kernel[launch_config](*args)`` back to back: the whole launch and,
    on a GPU, its steps in numba-cuda (internals): configuring, typing the arguments (the dispatcher's
    key), flattening them into the kernel's parameters, and the compiled kernel's launch (flattening
    included, typing not)."""
    configured = kernel[launch_config]
    parts = {"whole launch": lambda: configured(*args), "configure": lambda: kernel[launch_config]}
    if not config.ENABLE_CUDASIM:
        compiled = kernel.compile(tuple(kernel.typeof_pyval(arg) for arg in args))

        def flatten():
            parameters = []
            for argument_type, arg in zip(compiled.argument_types, args):
                compiled._prepare_args(argument_type, arg, configured.stream, [], parameters)
            return parameters

        parts["typing"] = lambda: tuple(kernel.typeof_pyval(arg) for arg in args)
        parts["flattening"] = flatten
        parts["compiled launch"] = lambda: compiled.launch(args, configured.griddim, configured.blockdim,
                                                           configured.stream, configured.sharedmem)
    timings = {}
    for name, part in parts.items():
        cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            part()
        timings[name] = round((time.perf_counter() - start) / calls * 1e6, 1)
    cuda.synchronize()
    if "flattening" in parts:
        timings["kernel parameters"] = len(parts["flattening"]())
    return timings


def launch_costs_by_part(seq_len, batch, inputs, hidden, calls):
    """Print ``launch_parts`` of the input projection's and the recurrence's launch in an eval call."""
    model = LSTM(inputs, hidden, device="cuda").eval()
    x = cuda.to_device(np.random.default_rng(0).standard_normal((seq_len, batch, inputs)).astype(np.float32))
    model(x)  # compiled before the capture
    captured = {"input projection": (cuda_common, "gemm_tiles"), "recurrence": (cuda_forward, "forward_persistent")}
    kernels = {name: getattr(module, attribute) for name, (module, attribute) in captured.items()}
    try:
        for name, (module, attribute) in captured.items():
            setattr(module, attribute, CapturingKernel(kernels[name]))
        model(x)
        launches = {name: getattr(module, attribute).launches[0] for name, (module, attribute) in captured.items()}
    finally:
        for name, (module, attribute) in captured.items():
            setattr(module, attribute, kernels[name])
    for name, (launch_config, args) in launches.items():
        print(f"L{seq_len} N{batch} I{inputs} H{hidden} {name}, {len(args)} arguments, host us per launch:",
              launch_parts(kernels[name], launch_config, args, calls))


def call_costs(cases, calls):
    """Print where the time of eval calls of each case goes."""
    engine.forward = host_timed("engine.forward", engine.forward)
    cuda_backend.CUDABackend.empty = staticmethod(host_timed("allocate", cuda_backend.CUDABackend.empty))
    cuda_forward.persistent_grid = host_timed("persistent grid", cuda_forward.persistent_grid)
    cuda_forward.matmul = host_timed("input projection launch", cuda_forward.matmul)
    cuda_forward.forward_persistent = HostTimedKernel("recurrence launch", cuda_forward.forward_persistent)
    cuda_forward.cell_forward_parallel = HostTimedKernel("recurrence launches", cuda_forward.cell_forward_parallel)
    default_max_batch = cuda_backend.PERSISTENT_MAX_BATCH
    rng = np.random.default_rng(0)
    for seq_len, batch, inputs, hidden, design in cases:
        cuda_backend.PERSISTENT_MAX_BATCH = default_max_batch if design == "persistent" else -1
        model = LSTM(inputs, hidden, device="cuda").eval()
        call = functools.partial(model, cuda.to_device(rng.standard_normal((seq_len, batch, inputs)).astype(np.float32)))
        for _ in range(3):
            call()
        host_seconds.clear()
        waiting = per_call_ms(call, calls, True)
        parts = {name: f"{seconds / calls * 1e3:.3f}" for name, seconds in host_seconds.items()}
        print(f"---- L{seq_len} N{batch} I{inputs} H{hidden} {design}: ms per call (host, total) waiting for each"
              f" {waiting}, back to back {per_call_ms(call, calls, False)}")
        print("  host ms per call:", parts)
        print("  GPU ms per call:", gpu_ms_per_kernel(call, 10))
    cuda_backend.PERSISTENT_MAX_BATCH = default_max_batch


if __name__ == "__main__":
    launch_costs()
    try:  # numba-cuda internals: a release that moved them must not cost the rest of the report
        launch_costs_by_part(10, 1, 20, 20, 200)
    except Exception as error:  # noqa: BLE001
        print("launch_costs_by_part failed:", repr(error))
    call_costs(CASES, CALLS)
