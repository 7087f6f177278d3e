"""Regress the sum of a random length-10 sequence with LSTM(64) + Linear(1), trained with Adam.

    python examples/sum_regression.py            # 1000 samples, 10 epochs, batch 32
"""
import argparse

import numpy as np

from nblstm import LSTM
from nblstm.train import Adam, LastStep, Linear, MSELoss, Sequential


def make_data(n_samples, seq_len, rng):
    """x (n_samples, seq_len, 1) ~ N(0, 1) and y = x.sum over time, (n_samples, 1), float32."""
    x = rng.standard_normal((n_samples, seq_len, 1)).astype(np.float32)
    return x, x.sum(axis=1)


def evaluate(model, x, y):
    """Mean squared error of the model on (x, y), in inference mode."""
    model.eval()
    mse = float(MSELoss()(model(x), y))
    model.train()
    return mse


def run(n_samples=1000, seq_len=10, hidden_size=64, epochs=10, batch_size=32, lr=1e-2, test_fraction=0.2,
        seed=0, verbose=True):
    """Train and return {"test_mse_before", "test_mse", "epoch_losses"} (mean training loss per epoch)."""
    rng = np.random.default_rng(seed)
    x, y = make_data(n_samples, seq_len, rng)
    n_train = int(round(n_samples * (1 - test_fraction)))
    model = Sequential(LSTM(1, hidden_size, batch_first=True, seed=seed), LastStep(batch_first=True),
                       Linear(hidden_size, 1, seed=seed))
    loss_fn, optimizer = MSELoss(), Adam(model, lr=lr)
    test_mse_before = evaluate(model, x[n_train:], y[n_train:])
    epoch_losses = []
    for epoch in range(epochs):
        order = rng.permutation(n_train)
        losses = []
        for start in range(0, n_train, batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()
            losses.append(float(loss_fn(model(x[batch]), y[batch])))
            model.backward(loss_fn.backward())
            optimizer.step()
        epoch_losses.append(float(np.mean(losses)))
        if verbose:
            print(f"epoch {epoch + 1:2d}: train MSE {epoch_losses[-1]:.4f}")
    test_mse = evaluate(model, x[n_train:], y[n_train:])
    if verbose:
        print(f"test MSE {test_mse:.4f} (before training {test_mse_before:.4f}; variance of y {y.var():.2f})")
    return {"test_mse_before": test_mse_before, "test_mse": test_mse, "epoch_losses": epoch_losses}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seq-len", type=int, default=10)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run(args.samples, args.seq_len, args.hidden_size, args.epochs, args.batch_size, args.lr, seed=args.seed)


if __name__ == "__main__":
    main()
