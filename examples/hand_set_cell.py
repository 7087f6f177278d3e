"""A single-unit LSTM with hand-set weights, stepped as LSTMCell, run as LSTM, and checked against PyTorch.

Each input x_t = [value, write, read, 1].  The weights make the input gate open
unless write = -1, the forget gate keep the cell only when write = 1, the
candidate g = tanh(value), and the output gate open only when read = 1; all
recurrent weights are zero.  The printed h_t should match across the three.

    python examples/hand_set_cell.py
"""
import numpy as np

from nblstm import LSTM, LSTMCell

# rows in gate order i, f, g, o; columns: value, write, read, constant 1
WEIGHT_IH = np.array([[0, 100, 0, 10],
                      [0, 100, 0, -10],
                      [1, 0, 0, 0],
                      [0, 0, 100, -10]], np.float32)
INPUTS = np.array([[1, 0, 0, 1], [3, 1, 0, 1], [2, 0, 0, 1], [4, 1, 0, 1], [2, 0, 0, 1],
                   [1, 0, 1, 1], [3, -1, 0, 1], [6, 1, 0, 1], [1, 0, 1, 1]], np.float32)
DECIMALS = 3


def hand_set_cell():
    """LSTMCell(4, 1, bias=False) with WEIGHT_IH and a zero weight_hh."""
    cell = LSTMCell(4, 1, bias=False)
    cell.load_state_dict({"weight_ih": WEIGHT_IH, "weight_hh": np.zeros((4, 1))})
    return cell


def run(inputs=INPUTS):
    """h_t for every step, (L,), from LSTMCell stepped by hand, from LSTM and (if installed) from torch."""
    cell = hand_set_cell().eval()
    h = c = np.zeros(1, np.float32)
    cell_outputs = []
    for x_t in inputs:
        h, c = cell(x_t, (h, c))
        cell_outputs.append(h[0])
    lstm = LSTM(4, 1, bias=False).eval()
    lstm.load_state_dict({f"{name}_l0": value for name, value in cell.state_dict().items()})
    lstm_outputs = lstm(inputs)[0][:, 0]  # unbatched (L, 4) -> output (L, 1)
    results = {"LSTMCell": np.array(cell_outputs), "LSTM": lstm_outputs}
    try:
        import torch
    except ImportError:
        return results
    twin = torch.nn.LSTM(4, 1, bias=False)
    twin.load_state_dict(lstm.state_dict(as_torch=True))
    with torch.no_grad():
        results["torch"] = twin(torch.from_numpy(inputs))[0][:, 0].numpy()
    return results


def main():
    for name, outputs in run().items():
        print(f"{name:>8}: {np.round(outputs, DECIMALS)}")


if __name__ == "__main__":
    main()
