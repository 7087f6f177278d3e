#!/usr/bin/env bash
# The GPU checks of the CUDA path in one run, on a machine with an NVIDIA GPU and nblstm's dependencies
# installed (or on PYTHONPATH): versions, where a call's time goes (tools/cuda_host_cost.py), the designs
# side by side, the GPU benchmark, then tests/cuda on the real kernels.  While the GPU stages run, two
# processes compile the CPU engine's kernels that the parity tests compare with, one per dtype, into
# Numba's cache.
#
#   tools/gpu_check.sh OUT_DIR        (PYTHON=... to use another interpreter than python3)
#
# Each stage has a time limit and a log in OUT_DIR; a failing stage does not stop the next.  The end of
# the output is a summary: each stage's exit status and time, the tables, the tests' last lines.
set -u
out="$(realpath -m "${1:?usage: tools/gpu_check.sh OUT_DIR}")"
mkdir -p "$out"
cd "$(dirname "$0")/.."
# numba-cuda 0.30.4 (the lent H200's image, with NumPy 2.5.2) registers an overload of np.row_stack, which
# NumPy 2.5 removed: its CUDA target then fails to import.
# A sitecustomize on the path puts the alias back for every Python process of this run, test workers too.
shim="$(mktemp -d)"
printf '%s\n' 'import numpy' 'if not hasattr(numpy, "row_stack"):' '    numpy.row_stack = numpy.vstack' \
    >"$shim/sitecustomize.py"
export PYTHONPATH="$PWD:$shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
bench=("$python" -c "from nblstm.bench.cli import main; main()" run -b numba-cuda -b torch-cuda --repeats 5)

stage() {  # stage NAME SECONDS COMMAND...: run COMMAND with a time limit, output to OUT_DIR/NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}
cleanup() {
    rm -rf "$shim"
}
trap cleanup EXIT

stage versions 60 "$python" - <<'EOF'
import platform, sys
import numba, numpy
print("np.row_stack restored by tools/gpu_check.sh's sitecustomize:", numpy.row_stack is numpy.vstack)
print("python", sys.version.split()[0], platform.machine(), "numba", numba.__version__, "numpy", numpy.__version__)
try:
    import numba_cuda
    print("numba-cuda", numba_cuda.__version__)
except ImportError:
    print("numba-cuda: not installed (numba's built-in CUDA target)")
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
from numba import cuda
device = cuda.get_current_device()
print("GPU", device.name, "compute capability", device.compute_capability,
      "multiprocessors", device.MULTIPROCESSOR_COUNT)
from nblstm.kernels.cuda_common import cooperative_launch_supported
print("cooperative launch (grid sync) supported:", cooperative_launch_supported())
EOF

"$python" - >"$shim/cpu_compile.log" 2>&1 <<'EOF' &
# The CPU engine's kernels for the parity tests' calls, compiled into Numba's cache, one process per dtype.
import multiprocessing, sys, time
sys.path[:0] = ["tests", "tests/cuda"]


def compile_for(dtype_name):
    import numpy as np
    from cuda_helpers import forward_backward
    from test_cuda_parity import HIDDEN, INPUT, MATRIX, _inputs
    from nblstm.api import LSTM

    start = time.perf_counter()
    for options, dtype, batched in MATRIX:
        if dtype.__name__ == dtype_name:
            cpu = LSTM(INPUT, HIDDEN, dtype=dtype, seed=3, **options)
            forward_backward(cpu, *_inputs(cpu, np.random.default_rng(0), batched))
    return f"{dtype_name}: {time.perf_counter() - start:.0f} s"


with multiprocessing.Pool(2) as pool:
    print("CPU kernels compiled:", pool.map(compile_for, ["float32", "float64"]))
EOF
cpu_compile=$!

stage profile 120 "$python" tools/cuda_host_cost.py
stage designs 120 "$python" tools/cuda_designs.py --hidden-size 128 --hidden-size 512 --batch 1 --batch 8 \
    --batch 32 --batch 64
stage bench_seeds 200 "${bench[@]}" --preset seeds --mode both --json "$out/bench_seeds.json"
stage bench_small 150 "${bench[@]}" --seq-len 100 --batch 1 --batch 8 --batch 64 --input-size 128 \
    --hidden-size 128 --hidden-size 512 --mode both --json "$out/bench_small.json"
wait "$cpu_compile"
echo "== cpu_compile: $(tail -n 1 "$shim/cpu_compile.log")" | tee -a "$out/summary.txt"
workers=()
"$python" -c "import xdist" 2>/dev/null && workers=(-n 8)
stage tests 300 "$python" -m pytest tests/cuda -q -p no:cacheprovider "${workers[@]}"

# At most 8 files come back from the device tool: the versions go into the summary.
cat "$out/versions.log" >>"$out/summary.txt" && rm "$out/versions.log"
echo
for name in profile designs bench_seeds bench_small; do
    echo "---- $name"
    grep -v -e '^\s*$' -e 'it/s\]' -e '%|' -e 'NumbaPerformanceWarning' -e 'warn(errors' "$out/$name.log" | tail -n 40
done
echo "---- tests"
tail -n 30 "$out/tests.log"
echo "---- summary, versions"
cat "$out/summary.txt"
