"""The LSTM implementations ``nblstm-bench`` times, each behind one small interface.

A backend reports whether it can run here (``unavailable_reason``) and on which
cases (``unsupported_reason``), then ``prepare`` builds its model from a
``Problem`` (the same weights and inputs for everyone) and returns a
``Prepared``: ``run()`` does one timed call and returns what ``collect`` turns
into NumPy arrays for the correctness check.

Results are dicts with the keys ``output`` (L, N, D*H_out) and, in training
mode, ``grad_input`` (L, N, H_in) and ``grad/<parameter name>`` (PyTorch's
names and shapes).  Training mode is forward plus backward of
``sum(output * grad_output)`` for a fixed upstream gradient ``grad_output``,
producing the gradients of every parameter and of the input; each call starts
from zeroed gradients, as a training step does.
"""
import importlib
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np

from .. import reference
from ..params import init_parameters
from .cases import MODES


@dataclass
class Problem:
    """What every backend runs: PyTorch-named parameters, input x (L, N, H_in) and the upstream
    gradient grad_output (L, N, D*H_out), all in the case's dtype; the initial state is zero."""

    case: object
    params: dict
    x: np.ndarray
    grad_output: np.ndarray


def make_problem(case, seed=0):
    """Random weights (PyTorch's initialisation), input and upstream gradient for ``case``."""
    rng = np.random.default_rng(seed)
    config = case.config
    params = init_parameters(config.shapes(), case.hidden_size, np.dtype(case.dtype), rng)
    x = rng.standard_normal((case.seq_len, case.batch, case.input_size)).astype(case.dtype)
    out_features = config.num_directions * config.state_size
    grad_output = rng.standard_normal((case.seq_len, case.batch, out_features)).astype(case.dtype)
    return Problem(case, params, x, grad_output)


def numpy_lstm(params, config, x, grad_output, train):
    """The NumPy reference (``nblstm.reference``) in the arrays' dtype, as a results dict."""
    output, h_n, c_n, tape = reference.lstm_forward(params, config, x)
    results = {"output": output}
    if train:
        grad_x, _, _, grads = reference.lstm_backward(params, config, tape, np.zeros_like(h_n),
                                                      np.zeros_like(c_n), grad_output)
        results["grad_input"] = grad_x
        results.update({f"grad/{name}": grad for name, grad in grads.items()})
    return results


@dataclass
class Prepared:
    """A backend ready to time: ``run()`` is one call; ``collect(run())`` gives the results dict; ``plan``:
    how it chose to run the case, where it chose (nblstm-tuned: the plan ``nblstm.tune`` kept)."""

    run: Callable[[], object]
    collect: Callable[[object], dict]
    plan: str = ""


class Backend:
    """Base class: a name, the device it runs on ('cpu' or 'cuda') and the modes it supports."""

    name = ""
    device = "cpu"
    modes = MODES
    in_default_run = True  # runs when no backend is named
    description = ""

    def unavailable_reason(self):
        """None when the backend can run here, else a one-line reason."""
        return None

    def unsupported_reason(self, case, mode):
        """None when the backend can run ``case`` in ``mode``, else a one-line reason."""
        if mode not in self.modes:
            return f"{self.name} runs {', '.join(self.modes)} only"
        return None

    def prepare(self, problem, mode, threads):
        raise NotImplementedError


class NblstmBackend(Backend):
    """nblstm.api.LSTM on the CPU kernels, or on the CUDA kernels (``device='cuda'``); ``frozen``:
    ``nblstm.freeze`` of it (inference only), whose weights are packed once, as ONNX Runtime's are
    constants of its session; ``tuned``: after ``nblstm.tune`` (``TUNE_ROUNDS``) chose its plan for the
    case on this machine, in its set-up (``setup_s``), only when named: the seeds preset's tuning took 105 s
    against the sweep's 88 s."""

    TUNE_ROUNDS = 3

    def __init__(self, name, device, frozen=False, tuned=False):
        self.name, self.device, self.frozen, self.tuned = name, device, frozen, tuned
        self.in_default_run = not tuned
        if frozen:
            self.modes = ("fwd",)
        self.description = ("nblstm.freeze(nblstm.api.LSTM), Numba CPU kernels on weights packed once" if frozen
                            else "nblstm.api.LSTM after nblstm.tune (the fastest plan here, timed at set-up)" if tuned
                            else "nblstm.api.LSTM, Numba CPU kernels" if device == "cpu"
                            else "nblstm.api.LSTM(device='cuda'), Numba CUDA kernels")

    def unsupported_reason(self, case, mode):
        if mode not in self.modes:
            return "a frozen model (nblstm.freeze) is inference only (no training)"
        return None

    def unavailable_reason(self):
        if self.device == "cpu":
            return None
        if numba.config.ENABLE_CUDASIM:
            return "NUMBA_ENABLE_CUDASIM=1: Numba's CUDA simulator runs in Python on the CPU; its times mean nothing"
        try:
            nblstm_cuda = importlib.import_module("nblstm.cuda")
        except ImportError as error:
            if error.name == "nblstm.cuda":
                return "this build of nblstm has no CUDA path (no nblstm.cuda module)"
            return f"nblstm.cuda cannot be imported: {error}"
        if nblstm_cuda.is_available():
            return None
        reason = getattr(nblstm_cuda, "unavailable_reason", "no usable CUDA device")
        return str(reason() if callable(reason) else reason)

    def _device_io(self):
        """(to_device, to_host, synchronize) for this backend's arrays."""
        if self.device == "cpu":
            return (lambda array: array), np.asarray, (lambda: None)
        from numba import cuda

        def to_host(array):
            return array.copy_to_host() if hasattr(array, "copy_to_host") else np.asarray(array)

        return cuda.to_device, to_host, cuda.synchronize

    def prepare(self, problem, mode, threads):
        from .. import tune
        from ..api import LSTM, freeze

        to_device, to_host, synchronize = self._device_io()
        model = LSTM(**problem.case.lstm_kwargs(), dtype=problem.case.dtype,
                     device=None if self.device == "cpu" else self.device)
        model.load_state_dict(problem.params)
        model.train(mode == "train")
        if self.frozen:
            model = freeze(model)
        x = to_device(problem.x)
        plan = _kept_plan(tune(model, x, rounds=self.TUNE_ROUNDS)) if self.tuned else ""
        if mode == "fwd":
            def run():
                output, _ = model(x)
                synchronize()
                return output

            return Prepared(run, lambda output: {"output": to_host(output)}, plan)

        grad_output = to_device(problem.grad_output)

        def run_train():
            model.zero_grad()
            output, _ = model(x)
            grad_input, _ = model.backward(grad_output)
            synchronize()
            return output, grad_input

        def collect(raw):
            results = {"output": to_host(raw[0]), "grad_input": to_host(raw[1])}
            results.update({f"grad/{name}": to_host(grad) for name, grad in model.grads.items()})
            return results

        return Prepared(run_train, collect, plan)


def _kept_plan(timings):
    """The plan ``nblstm.tune`` kept, in words, from its ``PlanTiming``s."""
    return next(timing for timing in timings if timing.kept).describe()


class NumpyBackend(Backend):
    name = "numpy"
    description = "nblstm.reference: NumPy, one time step at a time"

    def prepare(self, problem, mode, threads):
        config, train = problem.case.config, mode == "train"
        return Prepared(lambda: numpy_lstm(problem.params, config, problem.x, problem.grad_output, train),
                        lambda results: results)


class TorchBackend(Backend):
    """torch.nn.LSTM on the CPU or a CUDA device (cuDNN); training through autograd."""

    def __init__(self, name, device):
        self.name, self.device = name, device
        self.description = f"torch.nn.LSTM on {device}" + (" (cuDNN)" if device == "cuda" else "")

    def unavailable_reason(self):
        try:
            import torch
        except ImportError:
            return "PyTorch is not installed (pip install torch)"
        if self.device == "cuda" and not torch.cuda.is_available():
            return f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build: {torch.version.cuda})"
        return None

    def prepare(self, problem, mode, threads):
        import torch

        case = problem.case
        synchronize = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        model = torch.nn.LSTM(**case.lstm_kwargs(), dtype=getattr(torch, case.dtype), device=self.device)
        model.load_state_dict({name: torch.from_numpy(value) for name, value in problem.params.items()})
        x = torch.from_numpy(problem.x).to(self.device)

        def host(tensor):
            return tensor.detach().cpu().numpy()

        if mode == "fwd":
            model.eval()

            def run():
                with torch.inference_mode():
                    output, _ = model(x)
                synchronize()
                return output

            return Prepared(run, lambda output: {"output": host(output)})

        x.requires_grad_(True)
        grad_output = torch.from_numpy(problem.grad_output).to(self.device)

        def run_train():
            model.zero_grad(set_to_none=True)
            x.grad = None
            output, _ = model(x)
            output.backward(grad_output)
            synchronize()
            return output

        def collect(output):
            results = {"output": host(output), "grad_input": host(x.grad)}
            results.update({f"grad/{name}": host(p.grad) for name, p in model.named_parameters()})
            return results

        return Prepared(run_train, collect)


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime's CPU LSTM kernel on an ONNX graph built from the same weights (inference only)."""

    name = "onnxruntime"
    modes = ("fwd",)
    description = "ONNX Runtime, CPU execution provider, one ONNX LSTM node per layer"

    def unavailable_reason(self):
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as error:
            return f"{error.name} is not installed (pip install onnx onnxruntime)"
        return None

    def unsupported_reason(self, case, mode):
        if mode not in self.modes:
            return "ONNX Runtime is inference only (no training)"
        if case.proj_size:
            return "ONNX's LSTM operator has no projection (proj_size)"
        if case.dtype != "float32":
            return "ONNX Runtime's CPU LSTM kernel runs float32 only"
        return None

    def prepare(self, problem, mode, threads):
        import onnxruntime

        from .onnx_lstm import build_lstm_model

        case = problem.case
        model = build_lstm_model(problem.params, case.config, case.seq_len, case.batch, case.dtype)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {"X": problem.x}
        return Prepared(lambda: session.run(["Y"], feed)[0], lambda output: {"output": output})


BACKENDS = {backend.name: backend for backend in (
    NblstmBackend("nblstm", "cpu"),
    NblstmBackend("nblstm-tuned", "cpu", tuned=True),
    NblstmBackend("nblstm-frozen", "cpu", frozen=True),
    NumpyBackend(),
    TorchBackend("torch-cpu", "cpu"),
    OnnxRuntimeBackend(),
    TorchBackend("torch-cuda", "cuda"),
    NblstmBackend("numba-cuda", "cuda"),
)}

# Speed-ups are reported against the first of these, on the row's device, that ran the same case and mode:
# a GPU backend against PyTorch on the GPU (cuDNN), never against a CPU time.
BASELINES = {"cpu": ("torch-cpu", "numpy"), "cuda": ("torch-cuda",)}


def select_backends(names=None):
    """The backends named (when None, all that run by default: ``in_default_run``), split into (available
    list, {name: reason unavailable})."""
    available, unavailable = [], {}
    for name in dict.fromkeys(names or [name for name, backend in BACKENDS.items() if backend.in_default_run]):
        backend = BACKENDS[name]
        reason = backend.unavailable_reason()
        if reason is None:
            available.append(backend)
        else:
            unavailable[name] = reason
    return available, unavailable
