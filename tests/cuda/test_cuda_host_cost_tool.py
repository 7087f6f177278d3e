"""tools/cuda_host_cost.py runs and reports the host's parts of a call for both recurrence designs
(the numbers belong to the GPU runs, not to tests)."""
import pathlib
import runpy

from nblstm import cuda_backend, engine
from nblstm.kernels import cuda_common, cuda_forward

TOOL = runpy.run_path(str(pathlib.Path(__file__).parents[2] / "tools" / "cuda_host_cost.py"))


def test_call_costs_name_each_part(monkeypatch, capsys):
    # The tool wraps these for good; setting them through monkeypatch puts the originals back after.
    for module, name in ((engine, "forward"), (cuda_forward, "persistent_grid"), (cuda_forward, "matmul"),
                         (cuda_forward, "forward_persistent"), (cuda_forward, "cell_forward_parallel")):
        monkeypatch.setattr(module, name, getattr(module, name))
    monkeypatch.setattr(cuda_backend.CUDABackend, "empty", vars(cuda_backend.CUDABackend)["empty"])  # the staticmethod
    TOOL["call_costs"]([(2, 1, 2, 3, "persistent"), (2, 2, 2, 3, "per_step")], 1)
    persistent, per_step = capsys.readouterr().out.split("---- ")[1:]
    assert persistent.startswith("L2 N1 I2 H3 persistent: ms per call (host, total)")
    for part in ("engine.forward", "allocate", "persistent grid", "input projection launch", "recurrence launch'"):
        assert part in persistent
    assert "recurrence launches" in per_step and "persistent grid" not in per_step
    assert "GPU ms per call" in per_step


def test_launch_costs_by_part_capture_both_launches_of_a_call(capsys):
    kernels = cuda_common.gemm_tiles, cuda_forward.forward_persistent
    TOOL["launch_costs_by_part"](2, 1, 2, 3, 1)
    projection, recurrence = capsys.readouterr().out.splitlines()
    assert projection.startswith("L2 N1 I2 H3 input projection, 7 arguments, host us per launch: {'whole launch'")
    assert recurrence.startswith("L2 N1 I2 H3 recurrence, 19 arguments, host us per launch: {'whole launch'")
    assert (cuda_common.gemm_tiles, cuda_forward.forward_persistent) == kernels  # put back


def test_a_capturing_kernel_answers_what_the_kernel_does():
    """persistent_grid types the arguments and compiles through the kernel it is given (on a GPU)."""
    capturing = TOOL["CapturingKernel"](cuda_forward.forward_persistent)
    assert capturing.py_func is cuda_forward.forward_persistent.py_func
