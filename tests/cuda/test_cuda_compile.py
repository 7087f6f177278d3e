"""Every CUDA kernel compiles for a real GPU (PTX through NVVM), also on machines without one.

The simulator that runs tests/cuda without a GPU never types or compiles a kernel;
tools/cuda_compile_check.py records the argument types of every launch of a model
matrix under the simulator and compiles each kernel for them.  Skipped where the
CUDA toolkit's NVVM is missing.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

TOOL = pathlib.Path(__file__).parents[2] / "tools" / "cuda_compile_check.py"


def test_every_kernel_compiles_for_the_gpu():
    env = {name: value for name, value in os.environ.items() if name != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run([sys.executable, str(TOOL), "--registers"], env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode == 2:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout
    assert "forward_persistent: 2 signature(s)" in result.stdout  # both dtypes reached the persistent design
    if "ptxas not found" not in result.stderr:
        assert re.search(r"forward_persistent: 2 signature\(s\), registers a thread: \d+ \d+", result.stdout)
