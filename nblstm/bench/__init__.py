"""``nblstm-bench``: LSTM throughput of nblstm against NumPy, PyTorch and ONNX Runtime on the same problems.

cases.py    the problems (named cases and presets) and their FLOP counts
backends.py the implementations timed, each behind the same small interface
onnx_lstm.py an ONNX graph of one LSTM node per layer, built from PyTorch-layout weights
runner.py   checking against the reference, warm-up, interleaved timing, thread control
peak.py     the machine's matrix-product throughput (the practical ceiling)
report.py   machine description, derived metrics, table, JSON and CSV
plot.py     throughput and speed-up figures
cli.py      the Click command
"""
