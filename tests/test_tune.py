"""nblstm.tune: every plan it may choose gives PyTorch's numbers, and it keeps the fastest for that kind of call."""
import itertools
import warnings

import numba
import numpy as np
import pytest
from test_backward import check_against_torch
from test_forward import DTYPES, ODD_SIZES, _random_state, assert_same, run_both

import nblstm
from nblstm import engine, tuning
from nblstm.api import LSTM, LSTMCell
from nblstm.train import LastStep, Linear, Sequential


def run_plans(model, call):
    """Run ``call()`` (a call of ``model``) on each of its plans in turn, as ``tune`` does, checking that
    each ran on its plan; returns the plans."""
    workspace = model._workspace
    workspace.trial = trial = engine.Trial()
    try:
        call()
        for index in range(len(trial.plans)):
            trial.index = index
            call()
            assert workspace._prepared[trial.key].plan == trial.plans[index]
    finally:
        workspace.trial = None
    return trial.plans


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", ODD_SIZES, ids=lambda s: "x".join(map(str, s[:4])) + str(s[4] or ""))
@pytest.mark.parametrize("kind", ["eval", "train", "frozen"])
def test_every_plan_matches_torch(sizes, dtype, kind, rng):
    """Whatever plan tune keeps (one thread or all, splitting the batch or the units, packed weights or
    not), forward and every gradient are PyTorch's."""
    seq_len, batch, input_size, hidden, extra = sizes
    model = LSTM(input_size, hidden, dtype=dtype, seed=5, **extra).train(kind == "train")
    if kind == "frozen":
        model = nblstm.freeze(model)
    x = rng.standard_normal((seq_len, batch, input_size)).astype(dtype)
    hx = _random_state(model, batch, rng)
    if kind == "train":
        plans = run_plans(model, lambda: check_against_torch(model, x, hx, rng) or model.zero_grad())
    else:
        plans = run_plans(model, lambda: assert_same(*run_both(model, x, hx), dtype))
    assert len(set(plans)) == len(plans) >= 2


def test_plans_cover_both_splits_and_both_layouts():
    """With two threads a call whose batch and units can both be split has six plans, the rule's first."""
    if numba.get_num_threads() < 2:
        pytest.skip("one thread: nothing to split")
    plans = engine.CPU.plans(8, 8, 300, 300, True, input_size=3)
    assert plans[0] == engine.CPU.plan(8, 8, 300, 300, True, input_size=3)
    assert {(threads > 1, by_batch, packed) for threads, _, by_batch, packed in plans} == {
        (False, False, False), (False, False, True), (True, False, False), (True, False, True),
        (True, True, False), (True, True, True)}
    # inference: threads that split the batch pack their own copies; 16 units a thread at least
    assert all(packed for _, _, by_batch, packed in engine.CPU.plans(8, 8, 300, 300, False, input_size=3) if by_batch)
    assert {threads for threads, *_ in engine.CPU.plans(8, 3, 16, 16, False, input_size=3)} == {1}


def test_a_trial_works_out_the_plans_once_for_each_kind_of_call(monkeypatch, rng):
    """The backend's plans cost several microseconds a call (a fifth of a small one), which every call timed
    would pay: the trial asks for them when the kind of call changes, and keeps them."""
    asked = []
    plans = engine.CPUBackend.plans
    monkeypatch.setattr(engine.CPUBackend, "plans", staticmethod(lambda *arguments: asked.append(arguments)
                                                                 or plans(*arguments)))
    model = LSTM(8, 32, seed=0).eval()
    workspace = model._workspace
    workspace.trial = trial = engine.Trial()
    short, long = (rng.standard_normal((seq_len, 2, 8)).astype(np.float32) for seq_len in (3, 30))
    for _ in range(3):
        model(short)
    assert len(asked) == 1 and trial.plans == plans(*asked[0])
    short_key, short_plans = trial.key, trial.plans
    trial.index = len(trial.plans) - 1  # another plan of the same kind of call: no need to ask again
    model(short)
    assert len(asked) == 1 and workspace._prepared[trial.key].plan == short_plans[-1]
    trial.index = 0
    model(long)
    assert len(asked) == 2 and trial.key != short_key and asked[1][0] == 30
    model(short, (np.zeros((1, 2, 32), np.float32), np.zeros((1, 2, 32), np.float32)))  # same key, from a state
    assert len(asked) == 3 and trial.key == short_key and asked[2] != asked[0]
    model(short)
    assert len(asked) == 4 and trial.plans == short_plans


def test_cell_plans_match_torch(rng):
    from oracle import assert_close, numpy, tensor, torch_twin

    cell = LSTMCell(5, 40, seed=4).eval()
    twin = torch_twin(cell)
    x, h, c = (rng.standard_normal((9, n)).astype(np.float32) for n in (5, 40, 40))

    def call():
        for ours, theirs in zip(cell(x, (h, c)), twin(tensor(x), (tensor(h), tensor(c)))):
            assert_close(ours, numpy(theirs), np.float32)

    assert len(run_plans(cell, call)) >= 2


class FakeClock:
    """``time`` for ``tuning``: each call of the model takes ``costs[plan index]`` seconds; the threads meet in
    ``meetings`` ns, one after each sample in turn (steady by default)."""

    def __init__(self, monkeypatch, costs, meetings=(100.0,)):
        self.now = 0.0
        plan = engine.Trial.plan

        def timed_plan(trial, key, arguments, plans_for):
            self.now += costs[trial.index]
            return plan(trial, key, arguments, plans_for)

        monkeypatch.setattr(engine.Trial, "plan", timed_plan)
        monkeypatch.setattr(tuning, "time", self)
        meetings = itertools.cycle(meetings)
        monkeypatch.setattr(tuning, "barrier_ns", lambda: next(meetings))

    def perf_counter(self):
        return self.now


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_tune_keeps_the_fastest_plan_for_that_kind_of_call(training, monkeypatch, rng):
    model = LSTM(3, 300, seed=0).train(training)
    x = rng.standard_normal((8, 8, 3)).astype(np.float32)
    plans = engine.CPU.plans(8, 8, 300, 300, training, True, 3)
    costs = [1.0 + index for index in range(len(plans))]
    costs[-1] = 0.5  # the last plan is the fastest
    FakeClock(monkeypatch, costs)
    timings = nblstm.tune(model, x, rounds=3)
    assert [timing.seconds for timing in timings] == sorted(costs)
    assert timings[0] == tuning.PlanTiming(plans[-1][0], tuning._split(plans[-1][0], plans[-1][2]), plans[-1][3],
                                           0.5, False, True)
    assert [timing.default for timing in timings].count(True) == 1 and timings[1].default
    assert [timing.kept for timing in timings].count(True) == 1
    assert timings[1].describe().endswith(", weights packed (the default)")
    for timing, words in ((tuning.PlanTiming(1, "none", False, 1.0, False, True), "1 thread, weights as they are"),
                          (tuning.PlanTiming(2, "batch", True, 1.0, False, True),
                           "2 threads splitting the batch, weights packed"),
                          (tuning.PlanTiming(4, "units", True, 1.0, False, False),
                           "4 threads splitting each step's units, weights packed")):
        assert timing.describe() == words
    monkeypatch.undo()
    model(x)  # the kept plan serves the model's calls of this shape and mode from zero states
    assert model._workspace._prepared[next(iter(model._workspace.plans))].plan == plans[-1]
    model(x[:4])  # ... but not calls of another length
    assert model._workspace.plans == {next(iter(model._workspace.plans)): plans[-1]}
    assert model._workspace.prepare(engine.CPU, model.config, model._parameters, 4, 8, np.float32, training,
                                    True).plan == engine.CPU.plan(4, 8, 300, 300, training, True, 3)


@pytest.mark.parametrize("margin, kept", [(0.1, 0), (0.0, -1), (0.04, -1)])
def test_a_plan_replaces_the_default_only_by_the_margin(margin, kept, monkeypatch, rng):
    model = LSTM(3, 300, seed=0).eval()
    x = rng.standard_normal((8, 8, 3)).astype(np.float32)
    plans = engine.CPU.plans(8, 8, 300, 300, False, True, 3)
    costs = [1.0] + [1.2] * (len(plans) - 2) + [0.95]  # the last 5% faster than the default
    FakeClock(monkeypatch, costs)
    timings = nblstm.tune(model, x, rounds=1, margin=margin)
    assert [timing.kept for timing in timings] == [kept == -1, kept == 0] + [False] * (len(plans) - 2)
    assert model._workspace.plans == {(*model._workspace.plans,)[0]: plans[kept]}


@pytest.mark.parametrize("layout", ["batch_first", "unbatched", "cell"])
def test_the_kept_plan_serves_the_calls_of_the_input_as_the_user_gives_it(layout, monkeypatch, rng):
    """batch_first and unbatched inputs, and LSTMCell's (N, H_in), are tuned under the time-major shape the
    engine runs: the next call of the same input runs on the kept plan."""
    model = LSTMCell(3, 300, seed=0) if layout == "cell" else LSTM(3, 300, batch_first=layout == "batch_first")
    model.eval()
    shape = {"batch_first": (8, 5, 3), "unbatched": (5, 3), "cell": (8, 3)}[layout]
    seq_len, batch = {"batch_first": (5, 8), "unbatched": (5, 1), "cell": (1, 8)}[layout]
    x = rng.standard_normal(shape).astype(np.float32)
    plans = engine.CPU.plans(seq_len, batch, 300, 300, False, True, 3)
    FakeClock(monkeypatch, [1.0] * (len(plans) - 1) + [0.5])
    nblstm.tune(model, x, rounds=1)
    monkeypatch.undo()
    [(key, plan)] = model._workspace.plans.items()
    assert key[1:3] == (seq_len, batch) and plan == plans[-1]
    model(x)
    assert model._workspace._prepared[key].plan == plans[-1]


@pytest.mark.parametrize("meetings, steady", [
    ((80.0, 150.0, 95.0), True), ((80.0, 90.0, 340.0), False), ((85.0, 30.0), False), ((None,), True),
    ((1200.0,) + (80.0,) * 29, True), ((30.0,) + (80.0,) * 29, True)])  # a lone meeting apart moves no median
def test_threads_that_moved_while_tuning_keep_the_default_plan_and_say_so(meetings, steady, monkeypatch, rng):
    """Where the threads' meeting time moved by more than STEADY_BARRIER_RATIO (a VM placing its CPUs near, far
    apart or on one core), a faster plan is not kept and a RuntimeWarning says why; None: one thread."""
    model = LSTM(3, 300, seed=0).eval()
    x = rng.standard_normal((8, 8, 3)).astype(np.float32)
    plans = engine.CPU.plans(8, 8, 300, 300, False, True, 3)
    FakeClock(monkeypatch, [1.0] * (len(plans) - 1) + [0.5], meetings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        timings = nblstm.tune(model, x, rounds=2)
    assert next(timing for timing in timings if timing.kept).default is not steady
    assert model._workspace.plans == {(*model._workspace.plans,)[0]: plans[-1] if steady else plans[0]}
    messages = [str(warning.message) for warning in caught if warning.category is RuntimeWarning]
    if steady:
        assert not messages
    else:
        [message] = messages
        assert message.startswith(f"tune: the threads took {min(meetings):.0f} to {max(meetings):.0f} ns to meet (a "
                                  "tenth left out at each end) while it timed the plans")
        assert "the default plan was kept; tune again when they are steady" in message


@pytest.mark.parametrize("dtype", DTYPES)
def test_tuned_model_gives_the_same_numbers(dtype, rng):
    model = LSTM(20, 64, num_layers=2, bidirectional=True, dtype=dtype, seed=2).eval()
    x = rng.standard_normal((12, 16, 20)).astype(dtype)
    hx = _random_state(model, 16, rng)
    before = model(x, hx)
    timings = nblstm.tune(model, x, hx, rounds=2, min_sample_time=0)
    assert len(timings) >= 2 and all(timing.seconds > 0 for timing in timings)
    after = model(x, hx)
    for a, b in zip((before[0], *before[1]), (after[0], *after[1])):  # sums may run in another order
        np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    assert_same((after[0], *after[1]), run_both(model, x, hx)[1], dtype)


def test_tuning_leaves_gradients_pending_backward_and_dropout_stream_alone(rng):
    model = LSTM(4, 40, num_layers=2, dropout=0.5, seed=3)
    x = rng.standard_normal((5, 8, 4)).astype(np.float32)
    output, _ = model(x)
    model.backward(np.ones_like(output))
    grads = {name: grad.copy() for name, grad in model.grads.items()}
    pending, _ = model(x)  # a forward waiting for its backward
    state = model._rng.bit_generator.state
    nblstm.tune(model, x, rounds=1, min_sample_time=0)
    assert model._rng.bit_generator.state == state
    for name, grad in grads.items():
        np.testing.assert_array_equal(model.grads[name], grad, err_msg=name)
    assert len(model._tapes) == 1
    model.backward(np.ones_like(pending))  # the pending forward's
    model.zero_grad()
    model.grads  # noqa: B018 (writes the zeros)
    nblstm.tune(model, x, rounds=1, min_sample_time=0)
    assert all(not grad.any() for grad in model.grads.values())


def test_tune_refuses_what_it_cannot_tune():
    x = np.zeros((3, 2, 4), np.float32)
    with pytest.raises(TypeError, match=r"tune takes an nblstm LSTM or LSTMCell \(in a Sequential, .*\), got Linear"):
        nblstm.tune(Linear(4, 2), x)
    with pytest.raises(TypeError, match=r"nblstm.tune\(model\[0\], x\)\), got Sequential"):
        nblstm.tune(Sequential(LSTM(4, 8), LastStep()), x)
    with pytest.raises(TypeError, match="got str"):
        nblstm.tune("LSTM", x)
    model = LSTM(4, 8)
    for rounds in (0, 1.5, True):
        with pytest.raises(ValueError, match="rounds must be an integer of at least 1"):
            nblstm.tune(model, x, rounds=rounds)
    for seconds in (-1, "1", None):
        with pytest.raises(ValueError, match="min_sample_time must be 0 or more seconds"):
            nblstm.tune(model, x, min_sample_time=seconds)
    for margin in (-0.1, 1, "0.1"):
        with pytest.raises(ValueError, match="margin must be a fraction from 0 to below 1"):
            nblstm.tune(model, x, margin=margin)
    with pytest.raises(ValueError, match=r"input.shape\[-1\] must be equal to input_size. Expected 4, got 5"):
        nblstm.tune(model, np.zeros((3, 2, 5), np.float32))  # the model's own checks
    assert model._workspace.trial is None and model._workspace.plans == {}
