"""Shapes of a 2-layer bidirectional LSTM, as in PyTorch's nn.LSTM documentation example.

    python examples/shapes.py
"""
import numpy as np

from nblstm import LSTM


def run(seed=0):
    """Returns the shapes of output, h_n and c_n for x (5, 3, 10) and zero (4, 3, 20) states."""
    lstm = LSTM(input_size=10, hidden_size=20, num_layers=2, bidirectional=True, seed=seed)
    x = np.random.default_rng(seed).standard_normal((5, 3, 10)).astype(np.float32)  # (L, N, H_in)
    h0 = np.zeros((4, 3, 20), np.float32)  # (D * num_layers, N, H_out)
    c0 = np.zeros((4, 3, 20), np.float32)  # (D * num_layers, N, H_cell)
    output, (h_n, c_n) = lstm(x, (h0, c0))
    return {"output": output.shape, "h_n": h_n.shape, "c_n": c_n.shape}


def main():
    for name, shape in run().items():
        print(f"{name}: {shape}")


if __name__ == "__main__":
    main()
