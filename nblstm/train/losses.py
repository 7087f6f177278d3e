"""Loss functions with PyTorch's semantics: ``MSELoss`` and ``CrossEntropyLoss``.

``loss_fn(input, target)`` returns the loss (a NumPy scalar for reduction
'mean' or 'sum', an array for 'none') and remembers what it needs;
``loss_fn.backward()`` then returns the gradient w.r.t. ``input``, shaped like it,
ready for ``model.backward``.  ``backward(grad)`` takes an upstream gradient
w.r.t. the loss (a scalar, or an array shaped like the 'none' loss).
"""
import numpy as np

from ..module import to_numpy

REDUCTIONS = ("mean", "sum", "none")


def _float_array(value, name):
    """A float32/float64 array (float16 is widened to float32); other dtypes are refused."""
    array = to_numpy(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}")
    return array.astype(np.promote_types(array.dtype, np.float32), copy=False)


class _Loss:
    """Reduction and backward shared by the losses.

    A subclass's ``_elementwise(input, target)`` returns the unreduced loss and the
    'mean' denominator; its ``_input_grad(grad_losses)`` maps the gradient w.r.t.
    the unreduced loss (an array of its shape, or one Python float for all of it)
    to the gradient w.r.t. the input of the latest call.
    """

    def __init__(self, reduction="mean"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"{reduction} is not a valid value for reduction (expected one of {REDUCTIONS})")
        self.reduction = reduction
        self._loss_shape = None

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"

    def __call__(self, input, target):
        losses, self._denominator = self._elementwise(input, target)
        self._loss_shape = losses.shape
        if self.reduction == "none":
            return losses
        total = losses.sum()
        if self.reduction == "sum":
            return total
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / self._denominator

    def backward(self, grad=None):
        """Gradient w.r.t. the latest call's input; ``grad`` is dObjective/dLoss (default 1)."""
        if self._loss_shape is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a call loss_fn(input, target) first")
        if self.reduction == "none":
            upstream = np.ones(self._loss_shape) if grad is None else np.asarray(grad)
            if upstream.shape != self._loss_shape:
                raise ValueError(f"grad must have the shape of the loss {self._loss_shape}, got {upstream.shape}")
        else:  # one scalar for every element: in the input's dtype (NumPy keeps float32 * Python float in float32)
            upstream = 1.0 if grad is None else float(np.asarray(grad))
            if self.reduction == "mean":
                with np.errstate(invalid="ignore", divide="ignore"):  # nothing counted: inf or NaN, as torch
                    upstream = float(np.float64(upstream) / self._denominator)
        return self._input_grad(upstream)


class MSELoss(_Loss):
    """Mean squared error: loss_n = (input_n - target_n)^2, input and target of the same shape;
    'mean' divides the sum by the number of elements."""

    def _elementwise(self, input, target):
        input = _float_array(input, "input")
        target = _float_array(target, "target")
        if target.shape != input.shape:
            raise ValueError(f"MSELoss: target shape {target.shape} must equal input shape {input.shape}")
        self._diff = input - target.astype(input.dtype, copy=False)
        return self._diff * self._diff, input.size

    def _input_grad(self, grad_losses):
        return (2 * grad_losses * self._diff).astype(self._diff.dtype, copy=False)


class CrossEntropyLoss(_Loss):
    """Cross entropy of logits against class indices, as ``torch.nn.CrossEntropyLoss``.

    input: logits (C,), (N, C) or (N, C, d_1, ..., d_K); target: integer class
    indices of the input's shape without the class axis ((), (N,) or (N, d_1, ..., d_K)).
    loss_n = -weight[t_n] * log_softmax(input_n)[t_n], and 0 where t_n == ignore_index;
    'mean' divides the sum by the sum of weight[t_n] over the targets not ignored.
    weight: optional (C,) per-class weights.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(reduction)
        self.weight = None if weight is None else _float_array(weight, "weight")
        self.ignore_index = int(ignore_index)

    def _elementwise(self, input, target):
        logits = _float_array(input, "input")
        target = to_numpy(target)
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"CrossEntropyLoss: target must hold class indices (an integer array), "
                            f"got dtype {target.dtype}")
        self._class_axis = 0 if logits.ndim == 1 else 1
        logits = np.moveaxis(logits, self._class_axis, -1)  # (..., C)
        classes = logits.shape[-1]
        if target.shape != logits.shape[:-1]:
            raise ValueError(f"CrossEntropyLoss: expected target of shape {logits.shape[:-1]} for input of shape "
                             f"{input.shape if hasattr(input, 'shape') else logits.shape}, got {target.shape}")
        if self.weight is not None and self.weight.shape != (classes,):
            raise ValueError(f"CrossEntropyLoss: weight must have shape ({classes},), got {self.weight.shape}")
        kept = target != self.ignore_index
        out_of_range = kept & ((target < 0) | (target >= classes))
        if out_of_range.any():
            raise IndexError(f"Target {target[out_of_range].flat[0]} is out of bounds (classes: {classes}).")
        self._target = np.where(kept, target, 0)[..., None]
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_prob = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        class_weight = np.ones(classes, logits.dtype) if self.weight is None else self.weight.astype(logits.dtype)
        self._kept = kept
        self._sample_weight = class_weight[self._target[..., 0]] * kept
        self._prob = np.exp(log_prob)
        nll = -np.take_along_axis(log_prob, self._target, axis=-1)[..., 0]
        return self._sample_weight * nll, self._sample_weight.sum()

    def _input_grad(self, grad_losses):
        with np.errstate(invalid="ignore"):  # ignored targets get no gradient, even from an inf (mean over none)
            scale = np.where(self._kept, self._sample_weight * grad_losses, 0).astype(self._prob.dtype)[..., None]
        grad = self._prob * scale
        picked = np.take_along_axis(grad, self._target, axis=-1)
        np.put_along_axis(grad, self._target, picked - scale, axis=-1)
        return np.moveaxis(grad, -1, self._class_axis)
