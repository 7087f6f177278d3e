"""Forward parity: nblstm.api.LSTM / LSTMCell against torch.nn and the NumPy reference."""
import itertools

import numpy as np
import pytest
from oracle import assert_close, numpy, tensor, torch, torch_twin

from nblstm import reference
from nblstm.api import LSTM, LSTMCell

DTYPES = [np.float32, np.float64]

# num_layers x bidirectional x bias x proj_size; batch_first and the initial state
# alternate so every combination of them also appears.
MATRIX = [
    dict(num_layers=layers, bidirectional=bidir, bias=bias, proj_size=proj,
         batch_first=index % 2 == 1, with_state=index % 3 != 0)
    for index, (layers, bidir, bias, proj) in enumerate(
        itertools.product([1, 2, 3], [False, True], [True, False], [0, 5]))
]


def _case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


def _random_state(model, batch, rng, batched=True):
    c = model.config
    layers = c.num_layers * c.num_directions
    shape_h = (layers, batch, c.state_size) if batched else (layers, c.state_size)
    shape_c = (layers, batch, c.hidden_size) if batched else (layers, c.hidden_size)
    return rng.standard_normal(shape_h).astype(model.dtype), rng.standard_normal(shape_c).astype(model.dtype)


def run_both(model, x, hx):
    """(nblstm result, torch result) as (output, h_n, c_n) NumPy triples."""
    output, (h_n, c_n) = model(x, hx)
    twin = torch_twin(model)
    t_hx = None if hx is None else (tensor(hx[0]), tensor(hx[1]))
    t_out, (t_h, t_c) = twin(tensor(x), t_hx)
    return (output, h_n, c_n), (numpy(t_out), numpy(t_h), numpy(t_c))


def assert_same(ours, theirs, dtype):
    for name, a, b in zip(("output", "h_n", "c_n"), ours, theirs):
        assert a.shape == b.shape, name
        assert_close(a, b, dtype, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MATRIX, ids=_case_id)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_lstm_matches_torch(case, dtype, training, rng):
    case = dict(case)
    with_state = case.pop("with_state")
    model = LSTM(7, 13, dtype=dtype, seed=3, **case)
    model.train(training)
    seq_len, batch = 11, 5
    shape = (batch, seq_len, 7) if case["batch_first"] else (seq_len, batch, 7)
    x = rng.standard_normal(shape).astype(dtype)
    hx = _random_state(model, batch, rng) if with_state else None
    ours, theirs = run_both(model, x, hx)
    assert_same(ours, theirs, dtype)


# Sizes that reach every code path: 1-unit layers, primes, seq_len 1 and 2000,
# loops vs BLAS products, one thread vs a parallel split of the hidden units,
# and inference blocks of time steps that do not divide seq_len.
ODD_SIZES = [
    # seq_len, batch, input, hidden, extra
    (1, 1, 1, 1, {}),
    (2, 1, 1, 1, dict(bidirectional=True)),
    (1, 7, 13, 37, dict(num_layers=2)),
    (13, 1, 37, 7, dict(bidirectional=True, proj_size=3)),
    (17, 1, 5, 9, dict(bidirectional=True, proj_size=4)),  # batch 1 on packed weights (from 16 steps)
    (7, 37, 13, 1, {}),
    (2000, 2, 3, 5, {}),
    (9, 16, 37, 37, dict(bidirectional=True)),          # steps too small to split, the batch split in inference
    (100, 12, 30, 24, {}),                              # ... into 8 and 4 rows, over several inference blocks
    (12, 16, 200, 96, {}),                              # threads split the batch, each projects 200 inputs
    (9, 16, 20, 64, dict(proj_size=17, bidirectional=True)),
    (37, 64, 5, 48, dict(bidirectional=True)),          # several inference blocks, threads split steps
    (6, 32, 24, 96, dict(bidirectional=True, proj_size=40, num_layers=2)),  # threads, padding, projection
    (3, 130, 40, 100, dict(num_layers=2)),
    (9, 12, 8, 260, dict(bidirectional=True)),          # threads split 5 panels of units, one by rows
    (8, 8, 3, 300, {}),
    (8, 8, 3, 400, dict(proj_size=190)),                # 7 panels of units, 3 of state columns
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", ODD_SIZES, ids=lambda s: "x".join(map(str, s[:4])) + str(s[4] or ""))
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_odd_sizes_match_torch(sizes, dtype, training, rng):
    seq_len, batch, input_size, hidden, extra = sizes
    model = LSTM(input_size, hidden, dtype=dtype, seed=5, **extra).train(training)
    x = rng.standard_normal((seq_len, batch, input_size)).astype(dtype)
    ours, theirs = run_both(model, x, _random_state(model, batch, rng))
    assert_same(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", [{}, dict(num_layers=2, bidirectional=True, proj_size=2)], ids=["plain", "deep"])
def test_unbatched_input(extra, dtype, rng):
    model = LSTM(4, 6, dtype=dtype, seed=1, **extra)
    x = rng.standard_normal((9, 4)).astype(dtype)
    hx = _random_state(model, None, rng, batched=False)
    ours, theirs = run_both(model, x, hx)
    assert ours[0].shape == (9, model.config.num_directions * model.config.state_size)
    assert_same(ours, theirs, dtype)
    # the same numbers as a batch of one
    batched, (h_n, c_n) = model(x[:, None], (hx[0][:, None], hx[1][:, None]))
    np.testing.assert_array_equal(ours[0], batched[:, 0])
    np.testing.assert_array_equal(ours[1], h_n[:, 0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", [{}, dict(num_layers=2, bidirectional=True, proj_size=3, bias=False)],
                         ids=["plain", "deep"])
def test_reference_matches_torch_and_nblstm(extra, dtype, rng):
    model = LSTM(6, 8, dtype=dtype, seed=2, **extra)
    x = rng.standard_normal((12, 3, 6)).astype(dtype)
    h0, c0 = _random_state(model, 3, rng)
    ref_out, ref_h, ref_c, _ = reference.lstm_forward(model.state_dict(), model.config, x, h0, c0)
    ours, theirs = run_both(model, x, (h0, c0))
    assert_same((ref_out, ref_h, ref_c), theirs, dtype)
    assert_same((ref_out, ref_h, ref_c), ours, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_torch(bias, dtype, rng):
    cell = LSTMCell(5, 7, bias=bias, dtype=dtype, seed=4)
    twin = torch_twin(cell)
    x = rng.standard_normal((3, 5)).astype(dtype)
    h, c = (rng.standard_normal((3, 7)).astype(dtype) for _ in range(2))
    for hx in (None, (h, c)):
        ours = cell(x, hx)
        theirs = twin(tensor(x), None if hx is None else (tensor(h), tensor(c)))
        for a, b in zip(ours, theirs):
            assert_close(a, numpy(b), dtype)
    h1, c1 = cell(x[0], (h[0], c[0]))  # unbatched
    assert h1.shape == (7,)
    assert_close(h1, cell(x, (h, c))[0][0], dtype)


def test_cell_steps_equal_lstm(rng):
    """Stepping LSTMCell by hand gives LSTM's output with the same weights."""
    lstm = LSTM(3, 4, seed=0)
    cell = LSTMCell(3, 4)
    cell.load_state_dict({name[:-3]: value for name, value in lstm.state_dict().items()})
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    output, (h_n, c_n) = lstm(x)
    h = c = np.zeros((2, 4), np.float32)
    for t in range(6):
        h, c = cell(x[t], (h, c))
        assert_close(h, output[t], np.float32)
    assert_close(c, c_n[0], np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate_like_torch(dtype):
    model = LSTM(3, 4, num_layers=2, dtype=dtype, seed=0)
    x = np.ones((5, 2, 3), dtype)
    x[1, 0, 0] = np.nan
    x[2, 1, 1] = np.inf
    ours, theirs = run_both(model, x, None)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        finite = np.isfinite(b)
        assert_close(a[finite], b[finite], dtype)


def test_torch_float32_inputs_accepted():
    """Torch tensors are taken as arrays (converted through NumPy)."""
    model = LSTM(3, 4, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(torch.from_numpy(x))[0], model(x)[0])


def test_repeated_inference_calls_of_changing_shapes_match_torch(rng):
    """Eval-mode calls reuse their work arrays (engine.Workspace) from call to call: results stay
    right when the shapes change between calls, and every output is a new array."""
    model = LSTM(6, 9, num_layers=2, bidirectional=True, proj_size=4, seed=1).eval()
    twin = torch_twin(model)
    inputs = [rng.standard_normal(shape).astype(np.float32) for shape in [(5, 3, 6), (8, 1, 6), (5, 3, 6), (2, 3, 6)]]
    outputs = []
    for x in inputs + inputs:
        output, (h_n, c_n) = model(x)
        expected, (e_h, e_c) = twin(tensor(x))
        for a, b in ((output, expected), (h_n, e_h), (c_n, e_c)):
            assert_close(a, numpy(b), np.float32)
        outputs.append(output)
    assert not any(np.shares_memory(a, b) for a, b in itertools.combinations(outputs, 2))


def test_a_model_keeps_what_it_prepared_for_the_latest_shapes(monkeypatch, rng):
    """A model prepares each input shape once while it has room (Workspace.KEPT_PREPARED: a caller cycling
    through many sequence lengths prepares none again), keeps the zero states of at most Workspace.KEPT batch
    sizes and forgets the prepared forwards of those it dropped, first in first out; its results stay right
    when it meets a forgotten shape again."""
    from nblstm import engine
    from nblstm.engine import Workspace

    prepared = []
    prepare = engine.prepare
    monkeypatch.setattr(engine, "prepare", lambda *arguments: prepared.append(arguments[3:5]) or prepare(*arguments))
    model = LSTM(4, 5, seed=2).eval()
    twin = torch_twin(model)
    workspace = model._workspace

    def check(x):
        output, (h_n, c_n) = model(x)
        expected, (e_h, e_c) = twin(tensor(x))
        for a, b in ((output, expected), (h_n, e_h), (c_n, e_c)):
            assert_close(a, numpy(b), np.float32)

    lengths = [rng.standard_normal((seq_len, 2, 4)).astype(np.float32) for seq_len in range(1, 21)]
    for x in lengths * 3:
        check(x)
    assert prepared == [(seq_len, 2) for seq_len in range(1, 21)]
    batches = [rng.standard_normal((3, batch, 4)).astype(np.float32) for batch in range(1, Workspace.KEPT + 4)]
    for x in batches + batches[:2]:
        check(x)
        assert 0 < len(workspace._zeros) <= Workspace.KEPT
        kept = {id(zeros) for zeros in workspace._zeros.values()}
        assert all(id(entry.zero_state) in kept for entry in workspace._prepared.values())
    # batch 2's zero states were dropped (the first kept) and made again: the 20 lengths' forwards went with them
    assert [key[1] for key in workspace._prepared if key[2] == 2] == [3]
    monkeypatch.setattr(Workspace, "KEPT_PREPARED", 5)
    model._workspace = workspace = Workspace()
    for x in lengths[:8]:
        check(x)
        assert 0 < len(workspace._prepared) <= 5
    assert [key[1] for key in workspace._prepared] == [4, 5, 6, 7, 8]  # the latest, first in first out


def test_threads_share_one_model_in_inference(rng):
    """Threads calling one eval-mode model at once (the kernels release the GIL) each get their own
    work arrays, so each gets its own right answer."""
    from concurrent.futures import ThreadPoolExecutor

    model = LSTM(6, 40, seed=2).eval()
    inputs = [rng.standard_normal((30, 4, 6)).astype(np.float32) for _ in range(4)]
    expected = [model(x)[0] for x in inputs]

    def run(index):
        return all(np.array_equal(model(inputs[index])[0], expected[index]) for _ in range(20))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, range(4)))


def test_weights_changed_between_calls_are_used(rng):
    """A model keeps each input shape's prepared forward (plan, work-array shapes, its weights as
    the kernels take them) between calls: weights changed in place by assignment, load_state_dict
    or an optimizer step still reach the next call."""
    model = LSTM(5, 7, num_layers=2, bidirectional=True, seed=4).eval()
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    before = model(x)[0]
    model.weight_hh_l1_reverse = rng.standard_normal(model.weight_hh_l1_reverse.shape)
    model.load_state_dict({**model.state_dict(), "bias_ih_l0": np.ones(28, np.float32)})
    model.weight_ih_l0[0, 0] += 1.0  # a parameter array updated in place
    after = model(x)[0]
    assert not np.allclose(after, before)
    assert_close(after, numpy(torch_twin(model)(tensor(x))[0]), np.float32)
    # New arrays in a new dict, as Module.to makes them (it also starts a new workspace; here the
    # old one must notice by itself).
    model._parameters = {name: value * 0.5 for name, value in model._parameters.items()}
    assert_close(model(x)[0], numpy(torch_twin(model)(tensor(x))[0]), np.float32)


def test_cell_weights_changed_between_calls_are_used(rng):
    """LSTMCell, likewise: weights assigned between steps, or new arrays (as Module.to makes them),
    reach the next step."""
    cell = LSTMCell(5, 7, seed=4).eval()
    x = rng.standard_normal((3, 5)).astype(np.float32)
    before = cell(x)[0]
    cell.weight_ih = rng.standard_normal(cell.weight_ih.shape)
    after = cell(x)[0]
    assert not np.allclose(after, before)
    assert_close(after, numpy(torch_twin(cell)(tensor(x))[0]), np.float32)
    cell._parameters = {name: value * 0.5 for name, value in cell._parameters.items()}
    assert_close(cell(x)[0], numpy(torch_twin(cell)(tensor(x))[0]), np.float32)


def test_prepared_forward_follows_the_thread_count():
    """The plan kept for an input shape is remade when numba.set_num_threads changes how many
    threads a step of that size may use, or a call of steps too small to split
    (SMALL_STEPS_BATCH_SPLIT_MIN_WORK)."""
    import numba

    from nblstm import engine

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two threads")
    previous = numba.get_num_threads()
    for hidden, seq_len, batch in [(256, 20, 64), (32, 100, 8)]:
        model = LSTM(32, hidden).eval()
        workspace, params, config = model._workspace, model._parameters, model.config
        try:
            parts = []
            for threads in (1, 2, 1):
                numba.set_num_threads(threads)
                parts.append(workspace.prepare(engine.CPU, config, params, seq_len, batch, np.float32, False).plan[0])
            assert parts == [1, 2, 1]
        finally:
            numba.set_num_threads(previous)


def test_thread_settings_read_what_numba_reports_with_or_without_its_c_functions():
    """engine.thread_settings reads (threads, chunk size) through Numba's C functions, and through the
    public getters where a Numba lacks them; both follow set_num_threads and parallel_chunksize."""
    import types

    import numba

    from nblstm import engine

    readers = [engine.thread_settings, engine._thread_settings_reader(types.SimpleNamespace())]
    previous = numba.get_num_threads()
    try:
        for threads in {1, numba.config.NUMBA_NUM_THREADS}:
            numba.set_num_threads(threads)
            with numba.parallel_chunksize(3):
                assert [read() for read in readers] == [(threads, 3)] * 2
            assert [read() for read in readers] == [(threads, 0)] * 2
    finally:
        numba.set_num_threads(previous)


def test_default_zero_states_are_shared_and_stay_zero(rng):
    """Calls without hx share one kept array of zeros per shape (engine.Workspace.zeros): after
    training steps and calls of other batch sizes, a call without hx still matches one given
    explicit zeros and PyTorch."""
    model = LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3, seed=4)
    twin = torch_twin(model)
    x = rng.standard_normal((6, 2, 5)).astype(np.float32)
    for batch in (2, 3, 2, 1, 2):
        output, _ = model(rng.standard_normal((6, batch, 5)).astype(np.float32))
        model.backward(np.ones_like(output))
    zeros = (np.zeros((4, 2, 3), np.float32), np.zeros((4, 2, 7), np.float32))
    given, (given_h, given_c) = model(x, zeros)
    default, (default_h, default_c) = model(x)
    expected, _ = twin(tensor(x))
    np.testing.assert_array_equal(default, given)
    np.testing.assert_array_equal(default_h, given_h)
    np.testing.assert_array_equal(default_c, given_c)
    assert_close(default, numpy(expected), np.float32)


def test_calls_with_and_without_a_state_share_their_work_arrays(rng):
    """Only a one-step inference call plans differently without a state (``reads_recurrent_weights``):
    longer calls of one shape, with and without hx, share one prepared forward and its work arrays."""
    model = LSTM(32, 128, seed=2).eval()
    state = _random_state(model, 8, rng)
    for seq_len, prepared in ((10, 1), (1, 2)):
        x = rng.standard_normal((seq_len, 8, 32)).astype(np.float32)
        model._workspace = type(model._workspace)()
        model(x)
        arrays = model._workspace._free[0][1]
        ours, theirs = run_both(model, x, state)
        assert_same(ours, theirs, np.float32)
        assert len(model._workspace._prepared) == prepared
        assert (model._workspace._free[0][1] is arrays) == (prepared == 1)


@pytest.mark.parametrize("plan", ["batch", "units"])
@pytest.mark.parametrize("seq_len", [1, 2])
@pytest.mark.parametrize("state", ["none", "zeros", "random"])
def test_first_step_from_a_zero_state_skips_only_a_zero_product(plan, seq_len, state, rng):
    """From a zero initial state the first step's h_prev @ w_hh.T is zero and is skipped, and a
    one-step call does not even pack w_hh (``adds_recurrent_product``); any other state still adds
    it: with threads that split the batch (and pack the weights) or each step's units (a one-step
    call without a state splits the batch, ``CPUBackend.plan``)."""
    from nblstm import engine

    hidden, batch = (128, 16) if plan == "batch" else (256, 8)
    model = LSTM(32, hidden, num_layers=2, bidirectional=True, seed=6).eval()
    chosen = engine.CPU.plan(seq_len, batch, hidden, hidden, False)
    assert chosen[0] > 1 and chosen[2] == (plan == "batch")
    x = rng.standard_normal((seq_len, batch, 32)).astype(np.float32)
    hx = {"none": None, "random": _random_state(model, batch, rng),
          "zeros": tuple(np.zeros_like(a) for a in _random_state(model, batch, rng))}[state]
    ours, theirs = run_both(model, x, hx)
    assert_same(ours, theirs, np.float32)
    used = model._workspace.prepare(engine.CPU, model.config, model._parameters, seq_len, batch, np.float32, False,
                                    zero_start=hx is None).plan
    assert used[2] == (plan == "batch" or (hx is None and seq_len == 1))  # one step from none: the batch


def test_inference_splits_the_batch_up_to_4_mib_of_recurrent_weights(rng):
    """Inference splits the batch with up to INFERENCE_BATCH_SPLIT_MAX_BYTES of recurrent weights (float32
    hidden 512: each thread streams its own packed copy from the L3 cache) where the call has the rows to
    repay the copies; training only up to CACHE_BYTES_PER_THREAD (hidden 256); hidden 768 splits the
    units.  PyTorch's numbers through the batch split at hidden 384."""
    from nblstm import engine

    plan = engine.CPU.plan(100, 64, 512, 512, False)
    if plan[0] == 1 or not plan[1]:
        pytest.skip("needs two threads and Numba's OpenMP layer")
    assert plan[2]
    assert not engine.CPU.plan(100, 64, 512, 512, True)[2]
    assert not engine.CPU.plan(100, 64, 768, 768, False)[2]
    assert not engine.CPU.plan(10, 8, 512, 512, False)[2]  # 80 rows: too few to repay two copies
    assert engine.CPU.plan(3, 16, 384, 384, False)[2]
    model = LSTM(24, 384, seed=2).eval()
    x = rng.standard_normal((3, 16, 24)).astype(np.float32)
    hx = _random_state(model, 16, rng)
    ours, theirs = run_both(model, x, hx)
    assert_same(ours, theirs, np.float32)
    assert model._workspace.prepare(engine.CPU, model.config, model._parameters, 3, 16, np.float32, False).plan[2]


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_step_from_no_state_on_one_thread_packs_few_inputs(dtype, rng):
    """A one-step inference call from zero states on one thread projects more than PLAIN_INPUT_MAX_ROWS
    rows of up to ONE_STEP_PACKED_MAX_INPUT inputs on packed w_ih (it reads no other weight); with a
    state, wider inputs or fewer rows the packing rule of longer calls decides.  PyTorch's numbers
    either way."""
    from nblstm import engine

    plan = engine.CPU.plan
    assert plan(1, 5, 64, 64, False, zero_start=True, input_size=32) == (1, False, False, True)
    assert not plan(1, 5, 64, 64, False, input_size=32)[3]
    assert not plan(1, 5, 64, 64, False, zero_start=True, input_size=128)[3]
    assert not plan(1, 4, 64, 64, False, zero_start=True, input_size=32)[3]
    for input_size, batch in ((32, 5), (30, 9), (128, 5)):
        model = LSTM(input_size, 20, num_layers=2, dtype=dtype, seed=8).eval()
        x = rng.standard_normal((1, batch, input_size)).astype(dtype)
        ours, theirs = run_both(model, x, None)
        assert_same(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plan", [(1, False, False, True), (2, True, False, True), (2, False, False, True)],
                         ids=["one-thread", "units-one-region", "units-region-per-step"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_few_rows_on_packed_weights_project_on_plain_input_weights(plan, training, dtype, monkeypatch, rng):
    """Calls of up to PLAIN_INPUT_MAX_ROWS (time, batch) rows on packed recurrent weights project their
    inputs on w_ih as it is, its rows copied into the padded gate layout (hidden 20: 12 or 44 padding
    units a gate); one row more packs w_ih too.  Both give PyTorch's numbers."""
    from nblstm import engine
    from nblstm.kernels.cpu_forward import PLAIN_INPUT_MAX_ROWS

    monkeypatch.setattr(engine.CPUBackend, "plan", staticmethod(lambda *args, **kwargs: plan))
    for seq_len, batch in ((PLAIN_INPUT_MAX_ROWS, 1), (2, 2), (PLAIN_INPUT_MAX_ROWS + 1, 1)):
        model = LSTM(7, 20, num_layers=2, bidirectional=True, dtype=dtype, seed=7).train(training)
        x = rng.standard_normal((seq_len, batch, 7)).astype(dtype)
        ours, theirs = run_both(model, x, _random_state(model, batch, rng))
        assert_same(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [2, 1], ids=["together", "one-thread-runs-both-parts"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("seq_len, batch, hidden", [(3, 4, 40), (8, 8, 150), (1, 96, 20)])
def test_threads_splitting_the_units_project_their_own_inputs_in_short_calls(seq_len, batch, hidden, training, threads,
                                                                              dtype, monkeypatch, rng):
    """A short call that packs its weights (inference or training), on threads that split the units in one region, has
    each thread pack w_ih's panels of its units and project their inputs there (``projects_in_threads``; hidden 150,
    batch 8, 8 steps: a panel shared by rows, projected row by row); where the parts do not run together (one thread
    running both), the kernel packs and projects before the steps instead. Both give PyTorch's numbers, two layers
    in both directions."""
    import numba

    from nblstm import engine
    from nblstm.kernels.cpu_forward import projects_in_threads

    plan = (2, True, False, True)
    assert projects_in_threads(plan, False, True, seq_len * batch)
    assert not projects_in_threads(plan, True, True, seq_len * batch)  # weights packed before the call
    monkeypatch.setattr(engine.CPUBackend, "plan", staticmethod(lambda *args, **kwargs: plan))
    model = LSTM(7, hidden, num_layers=2, bidirectional=True, dtype=dtype, seed=3).train(training)
    x = rng.standard_normal((seq_len, batch, 7)).astype(dtype)
    state = _random_state(model, batch, rng)
    threads_before = numba.get_num_threads()
    numba.set_num_threads(min(threads, threads_before))
    try:
        ours = model(x, state)
    finally:
        numba.set_num_threads(threads_before)
    twin = torch_twin(model)
    t_out, (t_h, t_c) = twin(tensor(x), (tensor(state[0]), tensor(state[1])))
    assert_same((ours[0], *ours[1]), (numpy(t_out), numpy(t_h), numpy(t_c)), dtype)
