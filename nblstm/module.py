"""``Module``: what every nblstm layer with parameters shares, as in ``torch.nn.Module``.

Parameters as attributes (PyTorch's names), ``named_parameters()``, gradients in
``grads`` under the same names, ``state_dict()`` / ``load_state_dict()`` (NumPy
arrays or torch tensors), ``train()`` / ``eval()``, ``to(device)``, ``save()`` /
``load()`` to a portable ``.npz`` file, the argument and array checks used at
the API boundary, and ``freeze``: a read-only copy for inference.
"""
import copy
import json
import numbers
import warnings

import numpy as np

from . import engine
from .cuda import backend as cuda_backend
from .params import init_parameters

_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
_FILE_FORMAT = 1

# Training-mode forwards not yet backpropagated keep what their backward needs (PyTorch frees a graph
# with its outputs; nblstm cannot see whether the caller will backpropagate).  When two or more of them
# hold this much, the model warns that it may be running inference in training mode: such a loop held
# 9.8 MB more at every call at L100 N128 I32 H32, and its calls slowed from 5 to 27 ms by the 300th
# (page faults: the kernel zeroing fresh memory).
PENDING_WARNING_BYTES = 1 << 30


def _model_dtype(dtype):
    """float32 (the default) or float64, from a NumPy dtype, a name or a torch dtype."""
    if dtype is None:
        return _DTYPES["float32"]
    name = str(dtype).replace("torch.", "")
    try:
        name = np.dtype(dtype).name
    except TypeError:
        pass
    if name not in _DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return _DTYPES[name]


def _generator(seed):
    if seed is None or isinstance(seed, (numbers.Integral, np.random.SeedSequence)):
        return np.random.default_rng(seed)
    if isinstance(seed, np.random.Generator):
        return seed
    raise TypeError(f"seed must be None, an int or a numpy.random.Generator, got {type(seed).__name__}")


def check_int(name, value, minimum):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value < minimum:
        bound = "greater than zero" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    return bool(value)


def to_numpy(value):
    """A NumPy view of an array-like; torch tensors are detached and moved to the CPU, GPU arrays copied to it."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    elif hasattr(value, "copy_to_host"):
        value = value.copy_to_host()
    return np.asarray(value)


def _check_floating(dtype, name):
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"{name} must be a floating-point array (float32 or float64), got dtype {dtype}")


def as_float_array(value, name, dtype):
    """``value`` as a C-contiguous, writable array of the model's dtype, refusing non-float input."""
    if type(value) is np.ndarray and value.dtype == dtype and value.flags.carray:
        return value  # the common case, checked cheaply: small models are called often
    array = to_numpy(value)
    _check_floating(array.dtype, name)
    return np.require(array, dtype=dtype, requirements=("C", "W"))


def _host_copy(array):
    """A NumPy copy of a host or GPU array."""
    return array.copy() if isinstance(array, np.ndarray) else array.copy_to_host()


def shape_tuple(array):
    return tuple(int(n) for n in array.shape)


class Module:
    """Parameters, gradients, state dicts, devices, files and modes shared by nblstm's layers.

    A subclass calls ``_init_parameters`` from its constructor and defines ``_config_dict``
    (its constructor arguments, for ``save``/``load``).
    """

    # A frozen copy's parameters as its users see them: read-only views of its own ``_parameters``,
    # which stay writable for the kernels (Numba would compile each again, for about a minute per
    # dtype, for read-only arrays).  None: the parameters themselves.
    _parameter_views = None

    @property
    def frozen(self):
        """Whether this is a copy made by ``freeze``: read-only parameters, inference only."""
        return self._parameter_views is not None

    def _init_parameters(self, shapes, hidden_size, dtype, seed, device="cpu"):
        object.__setattr__(self, "_parameters", {})
        self.dtype = _model_dtype(dtype)
        self._rng = _generator(seed)
        self._parameters = init_parameters(shapes, hidden_size, self.dtype, self._rng)
        self._grads = {name: np.zeros_like(value) for name, value in self._parameters.items()}
        self._zeros_pending = False  # zero_grad() called, zeros not yet written (see there)
        self.training = True
        self._drop_tapes()
        self.device, self._backend = "cpu", engine.CPU
        self._workspace = engine.Workspace()  # work arrays and zero states, reused from call to call
        self.to(device)

    # -- devices ----------------------------------------------------------------------------
    def to(self, device):
        """Move parameters and gradients to ``device`` ('cpu', 'cuda' or 'cuda:0'); returns self, as
        ``torch.nn.Module.to`` does.

        Training-mode forwards not yet backpropagated are dropped (what they saved stays on the old
        device).  Raises RuntimeError when 'cuda' is asked for and no CUDA device is available
        (``nblstm.cuda.unavailable_reason()`` says why), ValueError for any other device.
        """
        device = check_device(device)
        if device == self.device:
            return self
        if self.frozen:
            raise RuntimeError(f"a frozen {type(self).__name__} stays on the CPU (nblstm.freeze): move the model "
                               "it was frozen from instead")
        backend = engine.CPU if device == "cpu" else cuda_backend()
        place = (lambda array: array) if device == "cpu" else backend.from_host
        self._parameters = {name: place(_host_copy(value)) for name, value in self._parameters.items()}
        self._grads = {name: place(_host_copy(value)) for name, value in self._grads.items()}
        self._drop_tapes()
        self._workspace = engine.Workspace()
        self.device, self._backend = device, backend
        return self

    def _as_array(self, value, name):
        """``value`` as a C-contiguous float array of the model's dtype on the model's device.

        On 'cuda', GPU arrays are used in place (or converted on the GPU) and host arrays copied in.
        """
        if self.device == "cpu":
            return as_float_array(value, name, self.dtype)
        view = self._backend.device_view(value)
        if view is None:
            return self._backend.from_host(as_float_array(value, name, self.dtype))
        _check_floating(view.dtype, name)
        return self._backend.contiguous(view, self.dtype)

    def _input_array(self, value, layouts):
        """The input ``value`` as ``_as_array`` gives it, checked to have input_size features and
        one of the ranks of ``layouts`` ({rank: shape as the message names it})."""
        if (type(value) is np.ndarray and value.dtype == self.dtype and value.flags.carray and value.ndim in layouts
                and value.shape[-1] == self.config.input_size and self.device == "cpu"):
            return value  # what every path below would return, checked inline: small models are called often
        x = self._as_array(value, "input")
        if x.ndim not in layouts:
            expected = " or ".join(f"{rank}-D {layout}" for rank, layout in layouts.items())
            raise ValueError(f"{type(self).__name__}: Expected input to be {expected}, "
                             f"got {x.ndim}-D of shape {shape_tuple(x)}")
        if x.shape[x.ndim - 1] != self.config.input_size:
            raise ValueError(f"input.shape[-1] must be equal to input_size. Expected {self.config.input_size}, "
                             f"got {shape_tuple(x)[-1]} (input shape {shape_tuple(x)})")
        return x

    def _for_caller(self, caller_value, *arrays):
        """``arrays`` as they go back to the caller: host copies when a 'cuda' model was given host data."""
        if self.device == "cpu" or self._backend.device_view(caller_value) is not None:
            return arrays
        return tuple(self._backend.to_host(array) for array in arrays)

    # -- parameters as attributes, as in torch.nn.Module ---------------------------------
    def __getattr__(self, name):
        parameters = self.__dict__.get("_parameter_views") or self.__dict__.get("_parameters", {})
        if name in parameters:
            return parameters[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in self.__dict__.get("_parameters", {}):
            self._set_parameter(name, value)
        else:
            object.__setattr__(self, name, value)

    def _set_parameter(self, name, value):
        if self.frozen:
            raise RuntimeError(f"cannot set {name}: the parameters of a frozen {type(self).__name__} are read-only "
                               "(nblstm.freeze); change the model it was frozen from and freeze it again")
        expected = self._parameters[name].shape
        array = to_numpy(value)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise TypeError(f"parameter {name} must be a real numeric array, got dtype {array.dtype}")
        if array.shape != expected:
            raise ValueError(f"size mismatch for {name}: copying a param with shape {shape_tuple(array)}, "
                             f"the shape in the current model is {expected}")
        if self.device == "cpu":
            np.copyto(self._parameters[name], array, casting="unsafe")  # in place, as torch's copy_
        else:
            self._parameters[name].copy_to_device(np.ascontiguousarray(array, dtype=self.dtype))

    def named_parameters(self):
        """(name, array) pairs in PyTorch's order; the arrays are the live parameters."""
        return iter(list((self._parameter_views or self._parameters).items()))

    def parameters(self):
        return iter([array for _, array in self.named_parameters()])

    def state_dict(self, as_torch=False):
        """{name: host NumPy copy of the parameter}; ``as_torch=True`` gives (CPU) torch tensors, which
        ``torch.nn.LSTM.load_state_dict`` accepts."""
        state = {name: _host_copy(value) for name, value in self._parameters.items()}
        if as_torch:
            import torch

            state = {name: torch.from_numpy(value) for name, value in state.items()}
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters from a state dict of NumPy arrays or torch tensors (e.g. PyTorch's).

        With ``strict`` the keys must match exactly; shapes must match in any case.
        """
        missing = [name for name in self._parameters if name not in state_dict]
        unexpected = [name for name in state_dict if name not in self._parameters]
        if strict and (missing or unexpected):
            raise ValueError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                             f"missing keys {missing}, unexpected keys {unexpected}")
        arrays = {name: to_numpy(value) for name, value in state_dict.items() if name in self._parameters}
        for name, array in arrays.items():  # check everything before changing anything
            if array.shape != self._parameters[name].shape:
                raise ValueError(f"size mismatch for {name}: copying a param with shape {shape_tuple(array)} "
                                 f"from checkpoint, the shape in current model is {self._parameters[name].shape}")
        for name, array in arrays.items():
            self._set_parameter(name, array)

    @property
    def grads(self):
        """{name: gradient}: the live gradient arrays, under the parameter names."""
        if self._zeros_pending:
            self._zeros_pending = False
            for grad in self._grads.values():
                grad[:] = 0
        return self._grads

    def zero_grad(self):
        """Reset every accumulated gradient to zero.

        The zeros are written lazily: the next ``backward`` overwrites the gradients instead of
        adding to them, which saves writing and then reading every gradient once (a 4 MiB memset
        at hidden 512, a quarter of a one-step training call); reading ``grads`` before that
        writes the zeros.  An array taken from ``grads`` before ``zero_grad()`` and read before
        either keeps its old values, as a tensor held from before PyTorch's ``zero_grad()`` does.
        """
        self._zeros_pending = True

    def _zeros(self, shape):
        """Zeros of ``shape`` for an upstream gradient the caller left out: the engine only reads
        those, so the workspace keeps one array per shape (a GPU call saves an allocation and a
        fill launch)."""
        return self._workspace.zeros(self._backend, (shape,), self.dtype)[0]

    def _grads_for_backward(self):
        """(grads, beta) for a backward pass: it sets each gradient to its new part + beta * itself,
        beta 0 where ``zero_grad`` left them to be zeros, else 1."""
        beta = 0.0 if self._zeros_pending else 1.0
        self._zeros_pending = False
        return self._grads, beta

    def train(self, mode=True):
        """Training mode: dropout on, and forward keeps what backward needs."""
        mode = check_bool("mode", mode)
        if mode and self.frozen:
            raise RuntimeError(f"a frozen {type(self).__name__} runs inference only (nblstm.freeze): train the "
                               "model it was frozen from, then freeze it again")
        self.training = mode
        return self

    def eval(self):
        """Inference mode: no dropout, nothing kept for backward."""
        return self.train(False)

    # -- files ----------------------------------------------------------------------------
    def _config_dict(self):
        raise NotImplementedError

    def save(self, path):
        """Write configuration and parameters to a portable ``.npz`` file (no pickles)."""
        config = dict(self._config_dict(), dtype=self.dtype.name, format=_FILE_FORMAT, kind=type(self).__name__)
        np.savez(path, __nblstm_config__=np.array(json.dumps(config)), **self.state_dict())

    @classmethod
    def load(cls, path):
        """Rebuild a model written by ``save``; parameters round-trip bit for bit."""
        with np.load(path, allow_pickle=False) as archive:
            if "__nblstm_config__" not in archive:
                raise ValueError(f"{path} is not an nblstm model file (no __nblstm_config__ entry)")
            config = json.loads(str(archive["__nblstm_config__"]))
            kind, version = config.pop("kind"), config.pop("format")
            if kind != cls.__name__ or version != _FILE_FORMAT:
                raise ValueError(f"{path} holds a {kind} (format {version}); "
                                 f"{cls.__name__}.load reads format {_FILE_FORMAT}")
            model = cls(**config)
            model.load_state_dict({name: archive[name] for name in archive.files if name != "__nblstm_config__"})
        return model

    # -- backward bookkeeping ------------------------------------------------------------
    def _drop_tapes(self):
        self._tapes = []  # what each training-mode forward not yet backpropagated keeps, the latest last

    def _keep_tape(self, tape):
        """Keep a training-mode forward's ``tape`` (``engine.Tape``, or an array) for its backward; warn when
        the kept ones come to hold PENDING_WARNING_BYTES, looked at when there are 2, 4, 8, ... of them
        (taking each to hold what the latest does: a look costs as little as it can)."""
        self._tapes.append(tape)
        kept = len(self._tapes)
        if kept < 2 or kept & (kept - 1):
            return
        each = tape.nbytes
        if kept * each >= PENDING_WARNING_BYTES and (kept == 2 or kept // 2 * each < PENDING_WARNING_BYTES):
            warnings.warn(  # once, at the look where the limit is passed
                f"{type(self).__name__}: {kept} training-mode forwards wait for backward, holding about "
                f"{kept * each / 2**20:,.0f} MiB: each keeps what its backward needs until backward "
                "runs (nblstm cannot see whether the results will be backpropagated). For inference call "
                ".eval() first; backpropagating the forwards frees them.", RuntimeWarning, stacklevel=3)

    def _pop_tape(self):
        if not self._tapes:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward pass in training mode "
                               "first (call .train() before forward); each forward can be backpropagated once")
        return self._tapes.pop()

    def _check_grad(self, grad, name, expected_shape):
        array = self._as_array(grad, name)
        if array.shape != expected_shape:
            raise ValueError(f"{name} must have the shape of the forward result {expected_shape}, "
                             f"got {shape_tuple(array)}")
        return array


def freeze(model):
    """A frozen copy of ``model`` (``LSTM``, ``LSTMCell`` or ``Linear``, on the CPU) for inference, as
    ``torch.jit.freeze`` makes of a TorchScript module: in eval mode for good, its parameters copied
    and shown as read-only arrays (views, whose flag one could set back, but then the packed weights
    would not follow).  Weights that cannot change need not be repacked at every call: an LSTM or
    LSTMCell packs them for its kernels once for each input shape's layout and reuses them, which
    ONNX Runtime, whose weights are constants, does too.  Results are the model's to rounding: it may
    pack where the model would not (``CPUBackend.plan``'s prepacked), and the sums then run in another order.

    The copy does not follow later changes to ``model``: freeze again after training.  Writing into
    its parameters raises NumPy's ValueError (read-only); ``train()``, setting a parameter
    (``load_state_dict`` too) and ``to('cuda')`` raise RuntimeError; it has no gradients.
    """
    if not isinstance(model, Module):
        raise TypeError(f"freeze takes an nblstm LSTM, LSTMCell or Linear, got {type(model).__name__}")
    if model.device != "cpu":
        raise ValueError(f"freeze: the model is on {model.device!r}; frozen models run on the CPU")
    frozen = copy.copy(model)
    parameters = {name: value.copy() for name, value in model._parameters.items()}
    views = {name: value.view() for name, value in parameters.items()}
    for view in views.values():
        view.flags.writeable = False
    frozen.__dict__.pop("_kept_layer_parameters", None)  # LSTMCell's view of the model's parameters
    frozen.__dict__.update(_parameters=parameters, _parameter_views=views, _grads={}, _zeros_pending=False,
                           training=False, _workspace=engine.Workspace(prepacks=True))
    frozen._drop_tapes()
    return frozen


def check_device(device):
    """'cpu' or 'cuda' from None, a name or a torch.device; ValueError for anything else."""
    name = "cpu" if device is None else str(device)
    if name in ("cpu", "cuda"):
        return name
    if name == "cuda:0":
        return "cuda"
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:0' (or None), got {device!r}; "
                     "nblstm runs on the current CUDA device (choose it with CUDA_VISIBLE_DEVICES)")
