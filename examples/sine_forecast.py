"""Fit y = 3 sin x + cos 5x + 6 + noise with a 2-layer LSTM and forecast 50 steps recursively.

Windows of 10 values predict the next one; LSTM(1, 200, num_layers=2) + Linear(200, 1)
is trained full-batch with Adam (lr 1e-2) on the first 80% of 500 points, then
fed its own predictions for a 50-step forecast, plotted against the series.
``--compare-torch`` trains the same model in PyTorch from the same initial
weights and prints both loss curves' ends and wall times.

    python examples/sine_forecast.py --out sine_forecast.png [--compare-torch]
"""
import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nblstm import LSTM  # noqa: E402
from nblstm.train import Adam, LastStep, Linear, MSELoss, Sequential  # noqa: E402


def make_series(n_points, rng):
    """t = 0, 0.1, ..., and y = 3 sin t + cos 5t + 6 + N(0, 1) noise, both (n_points,)."""
    t = 0.1 * np.arange(n_points)
    return t, 3 * np.sin(t) + np.cos(5 * t) + 6 + rng.standard_normal(n_points)


def make_windows(series, window):
    """Inputs (n, window, 1) of consecutive values and targets (n, 1) of the value after each window."""
    n = len(series) - window
    x = np.stack([series[i:i + window] for i in range(n)])[:, :, None]
    return x, series[window:, None]


def build_model(hidden_size, num_layers, dtype, seed):
    return Sequential(LSTM(1, hidden_size, num_layers=num_layers, batch_first=True, dtype=dtype, seed=seed),
                      LastStep(batch_first=True), Linear(hidden_size, 1, dtype=dtype, seed=seed))


def train(model, x, y, epochs, lr):
    """Full-batch Adam on MSE; returns the loss before each step, (epochs,)."""
    loss_fn, optimizer = MSELoss(), Adam(model, lr=lr)
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad()
        losses.append(float(loss_fn(model(x), y)))
        model.backward(loss_fn.backward())
        optimizer.step()
    return np.array(losses)


def train_torch(state_dict, hidden_size, num_layers, dtype, x, y, epochs, lr):
    """The same model and loop in PyTorch, from ``state_dict`` (the nblstm model's initial weights)."""
    import torch

    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    model = torch.nn.ModuleDict({  # keys "0" and "2" give the nblstm Sequential's parameter names
        "0": torch.nn.LSTM(1, hidden_size, num_layers=num_layers, batch_first=True, dtype=torch_dtype),
        "2": torch.nn.Linear(hidden_size, 1, dtype=torch_dtype)})
    model.load_state_dict(state_dict)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model["2"](model["0"](x)[0][:, -1]), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


def forecast(model, history, steps):
    """Predict ``steps`` values recursively from the last window ``history`` (window,)."""
    model.eval()
    window = list(history)
    predictions = []
    for _ in range(steps):
        x = np.array(window[-len(history):], model[0].dtype)[None, :, None]
        predictions.append(float(model(x)[0, 0]))
        window.append(predictions[-1])
    model.train()
    return np.array(predictions)


def plot(t, series, n_train, forecast_values, path):
    figure, axis = plt.subplots(figsize=(10, 4))
    shown = slice(max(0, n_train - 100), n_train + len(forecast_values))
    axis.plot(t[shown], series[shown], color="0.6", label="target (noisy series)")
    axis.plot(t[n_train:n_train + len(forecast_values)], forecast_values, color="C3", linewidth=2,
              label=f"prediction ({len(forecast_values)}-step recursive forecast)")
    axis.axvline(t[n_train], color="k", linestyle=":", label="end of training data")
    axis.set_xlabel("t")
    axis.set_ylabel("3 sin t + cos 5t + 6 + noise")
    axis.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(n_points=500, window=10, hidden_size=200, num_layers=2, epochs=150, lr=1e-2, steps=50, dtype="float32",
        seed=0, out="sine_forecast.png", compare_torch=False, verbose=True):
    """Train, forecast and plot.  Returns {"losses", "forecast", "forecast_mse"} and, with
    compare_torch, {"torch_losses", "seconds", "torch_seconds"}."""
    dtype = np.dtype(dtype).type
    t, series = make_series(n_points, np.random.default_rng(seed))
    n_train = int(0.8 * n_points)
    mean, std = series[:n_train].mean(), series[:n_train].std()
    scaled = ((series - mean) / std).astype(dtype)
    x, y = make_windows(scaled[:n_train], window)
    model = build_model(hidden_size, num_layers, dtype, seed)
    initial_state = model.state_dict(as_torch=compare_torch)
    start = time.perf_counter()
    losses = train(model, x, y, epochs, lr)
    results = {"losses": losses, "seconds": time.perf_counter() - start}
    predicted = forecast(model, scaled[n_train - window:n_train], steps) * std + mean
    target = series[n_train:n_train + steps]
    results.update(forecast=predicted, forecast_mse=float(np.mean((predicted - target[:len(predicted)]) ** 2)))
    plot(t, series, n_train, predicted, out)
    if verbose:
        print(f"nblstm: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {epochs} epochs, {results['seconds']:.1f} s "
              f"(including any first-call kernel compilation)")
        print(f"{steps}-step forecast MSE {results['forecast_mse']:.3f}; plot written to {out}")
    if compare_torch:
        start = time.perf_counter()
        results["torch_losses"] = train_torch(initial_state, hidden_size, num_layers, dtype, x, y, epochs, lr)
        results["torch_seconds"] = time.perf_counter() - start
        if verbose:
            torch_losses = results["torch_losses"]
            print(f"torch:  loss {torch_losses[0]:.4f} -> {torch_losses[-1]:.4f} in {epochs} epochs, "
                  f"{results['torch_seconds']:.1f} s")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--hidden-size", type=int, default=200)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=50, help="length of the recursive forecast")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="sine_forecast.png", help="PNG file to write")
    parser.add_argument("--compare-torch", action="store_true",
                        help="also train the identical model in PyTorch from the same initial weights")
    args = parser.parse_args(argv)
    return run(args.points, args.window, args.hidden_size, args.num_layers, args.epochs, args.lr, args.steps,
               args.dtype, args.seed, args.out, args.compare_torch)


if __name__ == "__main__":
    main()
