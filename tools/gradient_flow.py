"""Plot how much of a loss's gradient reaches each earlier step of an LSTM, per forget-gate bias.

The loss is the sum of the top layer's output at the last step; the plot shows
the norms of dLoss/dc_t and dLoss/dh_t against the number of steps between t
and the loss.  With a forget-gate bias of +3 (f ~ sigmoid(3) ~ 0.95) the cell
state carries the gradient back over many steps; with -3 (f ~ 0.05) it vanishes
within a few.

    python tools/gradient_flow.py --seq-len 100 --out gradient_flow.png
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nblstm import LSTM  # noqa: E402
from nblstm.analysis import gradient_flow  # noqa: E402
from nblstm.params import GATES  # noqa: E402


def lstm_with_forget_bias(input_size, hidden_size, num_layers, forget_bias, seed):
    """A float64 LSTM with PyTorch's initialisation, except every forget-gate bias (b_if + b_hf) = forget_bias."""
    lstm = LSTM(input_size, hidden_size, num_layers=num_layers, dtype="float64", seed=seed)
    gate = GATES.index("f")
    forget = slice(gate * hidden_size, (gate + 1) * hidden_size)
    for layer in range(num_layers):
        getattr(lstm, f"bias_ih_l{layer}")[forget] = forget_bias
        getattr(lstm, f"bias_hh_l{layer}")[forget] = 0.0
    return lstm


def run(seq_len=100, batch=8, input_size=4, hidden_size=32, num_layers=1, forget_biases=(3.0, -3.0), seed=0):
    """{forget_bias: GradientFlow} for the same weights and input, differing only in the forget-gate bias."""
    x = np.random.default_rng(seed).standard_normal((seq_len, batch, input_size))
    return {bias: gradient_flow(lstm_with_forget_bias(input_size, hidden_size, num_layers, bias, seed), x)
            for bias in forget_biases}


def plot(flows, path):
    """Norms of dLoss/dc_t and dLoss/dh_t (log scale) against steps to the loss, one colour per forget bias."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for color, (bias, flow) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], flows.items()):
        num_layers, steps = flow.h_norm.shape
        distance = np.arange(steps)[::-1]  # steps between t and the last step
        for axis, norms, symbol in ((axes[0], flow.c_norm, "c"), (axes[1], flow.h_norm, "h")):
            for layer in range(num_layers):
                positive = np.where(norms[layer] > 0, norms[layer], np.nan)  # underflowed: off a log axis
                label = f"forget bias {bias:+g} (f ≈ {1 / (1 + np.exp(-bias)):.2f})"
                axis.semilogy(distance, positive, color=color, linestyle=("-", "--", ":", "-.")[layer % 4],
                              label=label + (f", layer {layer}" if num_layers > 1 else ""))
            axis.set_title(f"‖dLoss/d{symbol}_t‖")
            axis.set_xlabel("steps between t and the last step")
    axes[0].set_ylabel("gradient norm over batch and units")
    axes[0].legend()
    figure.suptitle("Gradient of loss = sum of the last step's output, w.r.t. each step's state")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--forget-bias", type=float, nargs="+", default=[3.0, -3.0],
                        help="forget-gate bias values to compare (default: +3 -3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="gradient_flow.png", help="PNG file to write")
    args = parser.parse_args(argv)
    flows = run(args.seq_len, args.batch, args.input_size, args.hidden_size, args.num_layers,
                tuple(args.forget_bias), args.seed)
    for bias, flow in flows.items():
        print(f"forget bias {bias:+g}: top layer |dL/dc_t| at t = L: {flow.c_norm[-1, -1]:.3g}, t = 0: "
              f"{flow.c_norm[-1, 0]:.3g};  |dL/dh_t| at t = L: {flow.h_norm[-1, -1]:.3g}, t = 0: "
              f"{flow.h_norm[-1, 0]:.3g}")
    plot(flows, args.out)
    print(f"wrote {args.out}")
    return flows


if __name__ == "__main__":
    main()
