"""Training around an LSTM, PyTorch-shaped: layers, losses, optimizers, gradient clipping.

    from nblstm import LSTM
    from nblstm.train import Adam, LastStep, Linear, MSELoss, Sequential

    model = Sequential(LSTM(1, 64), LastStep(), Linear(64, 1))
    loss_fn, opt = MSELoss(), Adam(model, lr=1e-2)
    for x, y in batches:                   # x (L, N, 1), y (N, 1)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
"""
from .layers import LastStep, Linear, Sequential
from .losses import CrossEntropyLoss, MSELoss
from .optim import SGD, Adam, Optimizer, clip_grad_norm_

__all__ = ["Linear", "LastStep", "Sequential", "MSELoss", "CrossEntropyLoss", "Optimizer", "SGD", "Adam",
           "clip_grad_norm_"]
