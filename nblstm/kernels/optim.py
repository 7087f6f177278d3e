"""Optimizer updates as one compiled pass over a parameter.

NumPy's expressions for Adam make about eight passes with temporaries (SGD with momentum
three): Adam took 0.5 ms of a 1.7 ms training step of an LSTM(32, 128) + Linear(128, 128)
at L10 N8 (cProfile).
Compiled without fast-math, so that every operation rounds as in torch.optim.
"""
import math

from numba import njit

from .._config import JIT_OPTIONS

_EXACT_OPTIONS = dict(JIT_OPTIONS, fastmath=False)


@njit(**_EXACT_OPTIONS)
def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step):
    """One ``torch.optim.Adam`` step t = ``step`` of a parameter, in place (see ``nblstm.train.Adam``).

    param, grad, exp_avg, exp_avg_sq: (n,) flat arrays of one dtype; max_exp_avg_sq: (n,) with
    AMSGrad, else (0,).  The scalars are rounded to that dtype first, as NumPy rounds a Python
    float that multiplies a float32 array.
    """
    cast = param.dtype.type
    one_minus_beta1, beta2_, one_minus_beta2 = cast(1.0 - beta1), cast(beta2), cast(1.0 - beta2)
    step_size = cast(lr / (1.0 - beta1 ** step))
    correction = cast(math.sqrt(1.0 - beta2 ** step))
    decay, epsilon = cast(weight_decay), cast(eps)
    amsgrad = max_exp_avg_sq.shape[0] > 0
    for i in range(param.shape[0]):
        g = grad[i] + decay * param[i] if weight_decay != 0.0 else grad[i]
        m = exp_avg[i] + one_minus_beta1 * (g - exp_avg[i])
        v = exp_avg_sq[i] * beta2_ + one_minus_beta2 * g * g
        exp_avg[i], exp_avg_sq[i] = m, v
        if amsgrad:  # the running maximum keeps NaN, as np.maximum and torch.maximum do
            previous = max_exp_avg_sq[i]
            v = v if v > previous or v != v else previous
            max_exp_avg_sq[i] = v
        param[i] -= step_size * (m / (math.sqrt(v) / correction + epsilon))


@njit(**_EXACT_OPTIONS)
def sgd_update(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov, first):
    """One ``torch.optim.SGD`` step of a parameter, in place (see ``nblstm.train.SGD``).

    param, grad: (n,) flat arrays of one dtype; momentum_buffer: (n,) with momentum, else (0,),
    set to the step's gradient when ``first``.  Scalars rounded to the dtype as in ``adam_update``.
    """
    cast = param.dtype.type
    lr_, momentum_, one_minus_dampening, decay = cast(lr), cast(momentum), cast(1.0 - dampening), cast(weight_decay)
    with_momentum = momentum_buffer.shape[0] > 0
    for i in range(param.shape[0]):
        g = grad[i] + decay * param[i] if weight_decay != 0.0 else grad[i]
        if with_momentum:
            buffered = g if first else momentum_ * momentum_buffer[i] + one_minus_dampening * g
            momentum_buffer[i] = buffered
            g = g + momentum_ * buffered if nesterov else buffered
        param[i] -= lr_ * g
