"""Device placement, GPU-array inputs, the error without a GPU, and the kernels' building blocks."""
import itertools
import os
import subprocess
import sys

import numba.cuda
import numpy as np
import pytest
from cuda_helpers import (
    PERSISTENT_KERNELS,
    SIMULATED,
    forbid,
    forward_backward,
    host,
    is_device_array,
)
from numba import cuda
from oracle import assert_close, torch

import nblstm
import nblstm.cuda
import nblstm.cuda_backend as cuda_backend
from nblstm.api import LSTM, LSTMCell
from nblstm.cuda_backend import CUDAPlan
from nblstm.kernels import cuda_common


def test_device_arrays_in_device_arrays_out(rng):
    """Numba device arrays go in without a host copy and results, states and gradients stay on the GPU."""
    model = LSTM(3, 4, num_layers=2, batch_first=True, seed=0, device="cuda")
    x = rng.standard_normal((2, 3, 3)).astype(np.float32)
    grad_output = rng.standard_normal((2, 3, 4)).astype(np.float32)
    output, (h_n, c_n) = model(cuda.to_device(x))
    grad_x, (grad_h0, grad_c0) = model.backward(cuda.to_device(grad_output))
    for value in (output, h_n, c_n, grad_x, grad_h0, grad_c0, *model.grads.values(), *model.parameters()):
        assert is_device_array(value)
    device_grads = {name: host(grad) for name, grad in model.grads.items()}
    host_results, host_grads = forward_backward(model, x, None, grad_output, None)
    for a, b in zip((output, h_n, c_n, grad_x, grad_h0, grad_c0), host_results):
        np.testing.assert_array_equal(host(a), b)
    for name, grad in host_grads.items():
        np.testing.assert_array_equal(device_grads[name], grad)


def test_device_input_of_another_dtype_is_converted_on_the_gpu(rng):
    model = LSTM(3, 4, seed=0, device="cuda").eval()
    x = rng.standard_normal((5, 2, 3))
    output, _ = model(cuda.to_device(x))  # float64 into a float32 model
    assert is_device_array(output) and output.dtype == np.float32
    np.testing.assert_array_equal(host(output), model(x.astype(np.float32))[0])
    with pytest.raises(TypeError, match="input must be a floating-point array"):
        model(cuda.to_device(np.ones((5, 2, 3), np.int32)))


def test_to_moves_parameters_and_returns_self():
    model = LSTM(3, 4, proj_size=2, seed=0)
    before = model.state_dict()
    assert model.to("cuda") is model and model.device == "cuda"
    assert all(is_device_array(p) for p in model.parameters())
    state = model.state_dict()
    assert all(type(v) is np.ndarray for v in state.values())
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in model.state_dict(as_torch=True).values())
    for name in before:
        np.testing.assert_array_equal(state[name], before[name])
    assert model.to("cpu") is model and model.device == "cpu"
    assert all(type(p) is np.ndarray for p in model.parameters())
    cell = LSTMCell(2, 3, seed=0).to("cuda:0")
    assert cell.device == "cuda" and all(is_device_array(g) for g in cell.grads.values())


def test_freeze_refuses_a_gpu_model():
    """Frozen models run on the CPU: freezing a 'cuda' model says so (freeze its CPU copy instead)."""
    with pytest.raises(ValueError, match="the model is on 'cuda'; frozen models run on the CPU"):
        nblstm.freeze(LSTM(3, 4, seed=0, device="cuda"))
    frozen = nblstm.freeze(LSTM(3, 4, seed=0, device="cuda").to("cpu"))
    assert frozen.frozen and frozen.device == "cpu"


def test_tune_refuses_a_gpu_model():
    """tune chooses between the CPU kernels' plans: a 'cuda' model (one plan) is refused with the reason."""
    with pytest.raises(ValueError, match="the model is on 'cuda'; tune chooses between the CPU kernels' plans"):
        nblstm.tune(LSTM(3, 4, seed=0, device="cuda"), np.zeros((2, 1, 3), np.float32))


def test_load_state_dict_and_zero_grad_on_the_gpu(rng):
    cpu = LSTM(3, 4, seed=1)
    gpu = LSTM(3, 4, seed=2, device="cuda")
    gpu.load_state_dict(cpu.state_dict(as_torch=True))
    for name, value in gpu.state_dict().items():
        np.testing.assert_array_equal(value, cpu.state_dict()[name])
    x = rng.standard_normal((2, 2, 3)).astype(np.float32)
    gpu(x)
    gpu.backward(np.ones((2, 2, 4), np.float32))
    assert any(np.any(host(g)) for g in gpu.grads.values())
    gpu.zero_grad()
    assert not any(np.any(host(g)) for g in gpu.grads.values())


def test_weights_too_large_for_shared_memory_fall_back_to_per_step_launches(monkeypatch, rng):
    monkeypatch.setattr(cuda_backend, "PERSISTENT_MAX_BATCH", 10**9)
    monkeypatch.setattr(cuda_common, "SHARED_BYTES_LIMIT", 0)
    forbid(monkeypatch, PERSISTENT_KERNELS)
    gpu = LSTM(3, 4, proj_size=2, seed=4, device="cuda")
    cpu = LSTM(3, 4, proj_size=2, seed=4)
    inputs = (rng.standard_normal((3, 2, 3)).astype(np.float32), None,
              rng.standard_normal((3, 2, 2)).astype(np.float32), None)
    (ours, our_grads), (theirs, their_grads) = forward_backward(gpu, *inputs), forward_backward(cpu, *inputs)
    for a, b in zip(ours, theirs):
        assert_close(a, b, np.float32, grad=True)
    for name in our_grads:
        assert_close(our_grads[name], their_grads[name], np.float32, grad=True)


@pytest.mark.parametrize("trans_a, trans_b", list(itertools.product([False, True], repeat=2)))
def test_tiled_matmul_matches_numpy(trans_a, trans_b, rng):
    """c = op(a) @ op(b) + beta * addend over ragged tiles (tile 2 on 5 x 3 x 7)."""
    a = rng.standard_normal((3, 5) if trans_a else (5, 3))
    b = rng.standard_normal((7, 3) if trans_b else (3, 7))
    addend = rng.standard_normal((5, 7))
    c = cuda.device_array((5, 7))
    cuda_common.matmul(cuda.to_device(a), cuda.to_device(b), c, trans_a, trans_b, 0.5, CUDAPlan(2, 4, False),
                       addend=cuda.to_device(addend))
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b) + 0.5 * addend
    np.testing.assert_allclose(c.copy_to_host(), expected, rtol=1e-12, atol=1e-12)


def test_unavailable_cuda_raises_a_clear_error(monkeypatch):
    monkeypatch.setattr(numba.cuda, "is_available", lambda: False)
    monkeypatch.setattr(numba.cuda, "cuda_error", lambda: None)
    assert not nblstm.cuda.is_available()
    reason = nblstm.cuda.unavailable_reason()
    assert "no usable CUDA GPU" in reason and "\n" not in reason
    with pytest.raises(RuntimeError, match="no CUDA device is available"):
        LSTM(3, 4, device="cuda")
    model = LSTM(3, 4)
    with pytest.raises(RuntimeError, match="no CUDA device is available"):
        model.to("cuda")
    assert model.device == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        LSTMCell(3, 4, device="cuda:1")


@pytest.mark.skipif(not SIMULATED, reason="this machine has a GPU")
def test_without_gpu_or_simulator_the_package_imports_and_refuses_cuda():
    code = ("import nblstm, nblstm.cuda\n"
            "assert not nblstm.cuda.is_available(), nblstm.cuda.unavailable_reason()\n"
            "try:\n    nblstm.LSTM(2, 3, device='cuda')\n"
            "except RuntimeError as error:\n    print('RuntimeError:', error)\n")
    env = {name: value for name, value in os.environ.items() if name != "NUMBA_ENABLE_CUDASIM"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("RuntimeError: device 'cuda' was requested but no CUDA device is available")


@pytest.mark.parametrize(("threads", "items", "terms", "lanes"), [
    (256, 1, 128, 128),   # one long dot product: spread over as many threads as it has terms
    (256, 1, 1000, 256),  # ... up to the whole block
    (256, 8, 512, 32),    # 8 of them: a group of 32 threads each
    (256, 300, 512, 1),   # more items than threads: one thread each
    (100, 1, 1000, 4),    # lanes divide the block (100 = 4 * 25)
    (4, 1, 5, 4),
    (256, 1, 1, 1),
])
def test_group_lanes(threads, items, terms, lanes):
    assert cuda_common.group_lanes(threads, items, terms) == lanes
