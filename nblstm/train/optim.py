"""Optimizers with PyTorch's update rules (``SGD``, ``Adam``) and gradient clipping.

An optimizer is given the model itself (``LSTM``, ``Linear``, ``Sequential``:
anything with ``named_parameters()`` and ``grads``), not a list of arrays,
because nblstm keeps gradients beside the parameters (``model.grads[name]``)
rather than on them.  ``step()`` walks the (parameter, gradient) pairs by name
and updates the live parameter arrays in place; per-parameter state (momentum,
moments) is kept under the parameter's name::

    opt = Adam(model, lr=1e-2)
    opt.zero_grad(); loss = loss_fn(model(x), y); model.backward(loss_fn.backward()); opt.step()
"""
import numpy as np

from ..kernels.optim import adam_update, sgd_update


def _check_model(model):
    if not (hasattr(model, "named_parameters") and hasattr(model, "grads")):
        raise TypeError("nblstm optimizers take the model itself, e.g. Adam(model, lr=1e-3), since gradients "
                        f"live in model.grads; got {type(model).__name__}")
    read_only = [name for name, value in model.named_parameters()
                 if isinstance(value, np.ndarray) and not value.flags.writeable]
    if read_only:
        raise ValueError(f"the model's parameters {read_only} are read-only (a frozen model, nblstm.freeze): "
                         "optimize the model it was frozen from")
    return model


def _check_nonnegative(name, value):
    if not value >= 0.0:
        raise ValueError(f"Invalid {name}: {value}")
    return float(value)


class Optimizer:
    """Walks ``model``'s (name, parameter, gradient) triples; subclasses define ``_update``."""

    def __init__(self, model):
        self.model = _check_model(model)
        self.state = {}

    def zero_grad(self):
        """Reset the model's gradients to zero."""
        self.model.zero_grad()

    def step(self):
        """Update every parameter in place from its accumulated gradient."""
        grads = self.model.grads
        for name, param in self.model.named_parameters():
            grad = np.ascontiguousarray(grads[name], dtype=param.dtype)  # only read: a copy will do
            self._update(param, grad, self.state.setdefault(name, {}))

    def _update(self, param, grad, state):
        """One step of ``param`` (in place) from ``grad`` (C-contiguous, the same dtype); per-parameter
        state (arrays shaped like the parameter, as torch's) in ``state``."""
        raise NotImplementedError


class SGD(Optimizer):
    """``torch.optim.SGD``: stochastic gradient descent with optional momentum and weight decay.

    Per step, with g the gradient:
        g = g + weight_decay * p
        b = g on the first step, else momentum * b + (1 - dampening) * g   (if momentum != 0)
        g = g + momentum * b if nesterov else b                            (if momentum != 0)
        p = p - lr * g
    """

    def __init__(self, model, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(model)
        self.lr = _check_nonnegative("learning rate", lr)
        self.momentum = _check_nonnegative("momentum value", momentum)
        self.dampening = float(dampening)
        self.weight_decay = _check_nonnegative("weight_decay value", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _update(self, param, grad, state):
        first = "momentum_buffer" not in state
        if first:
            state["momentum_buffer"] = np.zeros_like(param) if self.momentum != 0 else np.zeros(0, param.dtype)
        sgd_update(*_flat(param, grad, state["momentum_buffer"]), self.lr, self.momentum, self.dampening,
                   self.weight_decay, self.nesterov, first)


class Adam(Optimizer):
    """``torch.optim.Adam`` (L2 weight decay added to the gradient, optional AMSGrad).

    Per step t = 1, 2, ... with g the gradient:
        g = g + weight_decay * p
        m = m + (1 - beta1) * (g - m);   v = beta2 * v + (1 - beta2) * g^2
        v_max = max(v_max, v)            (amsgrad: v_max replaces v below)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(model)
        self.lr = _check_nonnegative("learning rate", lr)
        self.eps = _check_nonnegative("epsilon value", eps)
        for index, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.weight_decay = _check_nonnegative("weight_decay value", weight_decay)
        self.amsgrad = bool(amsgrad)

    def _update(self, param, grad, state):
        if not state:
            state.update(step=0, exp_avg=np.zeros_like(param), exp_avg_sq=np.zeros_like(param),
                         max_exp_avg_sq=np.zeros_like(param) if self.amsgrad else np.zeros(0, param.dtype))
        state["step"] += 1
        beta1, beta2 = self.betas
        adam_update(*_flat(param, grad, state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"]), self.lr,
                    beta1, beta2, self.eps, self.weight_decay, state["step"])


def _flat(*arrays):
    """Flat views of C-contiguous arrays (the kernels update them in place, so never copies)."""
    for array in arrays:
        if not array.flags.c_contiguous:
            raise ValueError(f"optimizers update C-contiguous arrays in place, got strides {array.strides}")
    return tuple(array.reshape(-1) for array in arrays)


def clip_grad_norm_(model, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """``torch.nn.utils.clip_grad_norm_`` over ``model.grads``: scale every gradient in place
    by min(1, max_norm / (total_norm + 1e-6)), where total_norm is the ``norm_type``-norm of
    all gradients taken together (``inf`` for the largest magnitude).  Returns total_norm."""
    grads = list(_check_model(model).grads.values())
    if not grads:
        return 0.0
    norms = np.array([np.linalg.norm(grad.ravel(), norm_type) for grad in grads])
    total_norm = np.linalg.norm(norms, norm_type)
    if error_if_nonfinite and not np.isfinite(total_norm):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite, so it cannot be "
                           "clipped. To scale the gradients by the non-finite norm anyway, set "
                           "error_if_nonfinite=False")
    scale = np.minimum(max_norm / (total_norm + 1e-6), 1.0)  # NaN propagates, as in PyTorch
    for grad in grads:
        grad *= scale
    return total_norm
