"""An ONNX graph running a PyTorch-layout LSTM: one ONNX ``LSTM`` node per layer.

ONNX's LSTM operator differs from PyTorch's layout in three ways, all handled here:

* gates are stacked i, o, f, c (ONNX) instead of i, f, g, o (PyTorch; c is g);
* weights are W (D, 4H, H_in), R (D, 4H, H) and one bias B (D, 8H) = [W_b, R_b],
  with the forward direction first, instead of separate per-direction tensors;
* the output Y has shape (L, D, N, H); the next layer (and the caller) wants
  (L, N, D*H), so each node is followed by Transpose(0, 2, 1, 3) and Reshape.

ONNX's LSTM has no projection (proj_size), and ONNX Runtime's CPU kernel runs float32 only.
"""
import numpy as np

from ..params import GATES

ONNX_GATES = ("i", "o", "f", "g")
# Block k of an ONNX weight is block ONNX_GATE_BLOCKS[k] of the PyTorch weight.
ONNX_GATE_BLOCKS = tuple(GATES.index(gate) for gate in ONNX_GATES)

OPSET = 17
IR_VERSION = 8  # readable by every ONNX Runtime since 1.13


def onnx_gate_order(weight):
    """A PyTorch weight or bias (4H, ...) with its gate blocks reordered to ONNX's i, o, f, c."""
    blocks = np.split(weight, len(GATES), axis=0)
    return np.concatenate([blocks[k] for k in ONNX_GATE_BLOCKS], axis=0)


def onnx_layer_tensors(params, config, layer):
    """W (D, 4H, H_in), R (D, 4H, H) and B (D, 8H) of one layer, from PyTorch-named ``params``."""
    w, r, b = [], [], []
    for direction in range(config.num_directions):
        names = config.names(layer, direction)
        w.append(onnx_gate_order(params[names.weight_ih]))
        r.append(onnx_gate_order(params[names.weight_hh]))
        b.append(np.concatenate([onnx_gate_order(params[names.bias_ih]), onnx_gate_order(params[names.bias_hh])]))
    return np.stack(w), np.stack(r), np.stack(b)


def build_lstm_model(params, config, seq_len, batch, dtype):
    """A serialised ONNX model mapping input "X" (L, N, H_in) to "Y" (L, N, D*H) with zero initial state."""
    import onnx
    from onnx import helper, numpy_helper

    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, initializers = [], [numpy_helper.from_array(np.array([0, 0, -1], np.int64), "flat_shape")]
    layer_input = "X"
    for layer in range(config.num_layers):
        w, r, b = onnx_layer_tensors(params, config, layer)
        names = [f"W{layer}", f"R{layer}", f"B{layer}"]
        initializers += [numpy_helper.from_array(a.astype(dtype), n) for a, n in zip((w, r, b), names)]
        layer_output = "Y" if layer == config.num_layers - 1 else f"Y{layer}"
        nodes += [
            helper.make_node("LSTM", [layer_input] + names, [f"Y{layer}_dirs"], hidden_size=config.hidden_size,
                             direction="bidirectional" if config.bidirectional else "forward"),
            helper.make_node("Transpose", [f"Y{layer}_dirs"], [f"Y{layer}_batch_major"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"Y{layer}_batch_major", "flat_shape"], [layer_output]),
        ]
        layer_input = layer_output
    out_features = config.num_directions * config.hidden_size
    graph = helper.make_graph(
        nodes, "nblstm_lstm",
        [helper.make_tensor_value_info("X", elem_type, [seq_len, batch, config.input_size])],
        [helper.make_tensor_value_info("Y", elem_type, [seq_len, batch, out_features])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()
