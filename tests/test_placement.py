"""How near each other Numba's threads run (``nblstm.placement``), and the plans that follow it."""
import numba
import numpy as np
import pytest
from test_forward import assert_same, run_both

from nblstm import engine, placement
from nblstm.api import LSTM
from nblstm.bench.threads import thread_limit
from nblstm.placement import far_apart  # the real one: conftest pins placement.far_apart for the other tests

two_threads = pytest.mark.skipif(numba.get_num_threads() < 2 or not placement.runs_together(),
                                 reason="one thread, or a threading layer that does not run them together")


class Meetings:
    """``barrier_ns`` for ``far_apart``: the given timings in turn, counted."""

    def __init__(self, monkeypatch, *timings):
        self.timings, self.calls = list(timings), []
        monkeypatch.setattr(placement, "barrier_ns", self)
        monkeypatch.setattr(placement, "_latest", placement._Placement())

    def __call__(self, rounds):
        self.calls.append(rounds)
        return self.timings.pop(0)


@two_threads
def test_barrier_timing_needs_two_threads_running_together():
    assert 0 < placement.barrier_ns(rounds=200) < 1e6
    with thread_limit(1):
        assert placement.barrier_ns() is None


@two_threads
def test_far_apart_times_the_threads_on_this_machine(monkeypatch):
    monkeypatch.setattr(placement, "_latest", placement._Placement())
    assert far_apart() in (True, False)
    assert placement._latest.measured_at is not None


@pytest.mark.parametrize(("timings", "far", "calls"), [((90.0,), False, 1), ((330.0, 350.0), True, 2),
                                                       ((900.0, 90.0), False, 2),  # one timing slowed: the lesser
                                                       ((None,), False, 1)])  # one thread
def test_a_timing_that_changes_the_answer_is_taken_again(timings, far, calls, monkeypatch):
    meetings = Meetings(monkeypatch, *timings)
    assert far_apart(now=lambda: 5.0) is far
    assert meetings.calls == [placement.MEETINGS] * calls


def test_far_apart_times_again_once_its_timing_is_old_while_calls_keep_coming(monkeypatch):
    meetings = Meetings(monkeypatch, 90.0, 350.0, 340.0)
    asked = {10.0: False, 10.5: False, 11.5: False, 11.505: True}  # when a call asks: the answer
    for now, far in asked.items():
        assert far_apart(now=lambda now=now: now) is far
        # 10.5: within REMEASURE_SECONDS; 11.5: one second on, but 1 s after the call before (threads asleep)
        assert len(meetings.calls) == (1 if now < 11.505 else 3)


def test_an_occasional_caller_keeps_its_first_answer(monkeypatch):
    """Threads that waited a while take milliseconds to wake: a caller whose calls come further apart than
    AWAKE_SECONDS is not made to pay that for a timing."""
    meetings = Meetings(monkeypatch, 350.0, 340.0)
    for second in range(5):
        assert far_apart(now=lambda second=second: 10.0 + second * 2 * placement.REMEASURE_SECONDS)
    assert len(meetings.calls) == 2  # the first call's timing, taken twice


def test_a_caller_that_finds_a_timing_under_way_takes_the_last_answer(monkeypatch):
    meetings = Meetings(monkeypatch)
    placement._latest.far = True
    with placement._latest.lock:  # another thread is timing
        assert far_apart(now=lambda: 1.0)
    assert meetings.calls == []


@pytest.fixture
def far(monkeypatch):
    """The plans as where the threads run far apart."""
    monkeypatch.setattr(placement, "far_apart", lambda: True)
    monkeypatch.setattr(engine, "runs_together", lambda: True)


@pytest.fixture
def near(monkeypatch):
    monkeypatch.setattr(engine, "runs_together", lambda: True)


def plan(seq_len, batch, hidden, training=False, input_size=32):
    return engine.CPU.plan(seq_len, batch, hidden, hidden, training, input_size=input_size)


@two_threads
@pytest.mark.parametrize("training", [False, True])
def test_far_apart_steps_under_far_units_split_min_state_run_on_one_thread(far, training):
    for seq_len, batch, hidden in ((100, 4, 128), (10, 4, 128), (100, 4, 192), (100, 2, 224)):
        assert plan(seq_len, batch, hidden, training)[:3] == (1, False, False)
    for seq_len, batch, hidden in ((100, 1, 256), (100, 4, 256), (10, 4, 512)):  # the split still pays
        assert plan(seq_len, batch, hidden, training)[:3] == (2, True, False)


@two_threads
def test_a_plan_may_be_asked_for_either_state(near):
    """``far`` given, the plan is that state's, whatever ``placement.far_apart`` says (conftest: near)."""
    assert engine.CPU.plan(100, 4, 128, 128, False, far=True)[:3] == (1, False, False)
    assert engine.CPU.plan(100, 1, 128, 128, False, far=False)[:3] == (2, True, False)
    assert engine.CPU.plan(100, 4, 128, 128, False) == engine.CPU.plan(100, 4, 128, 128, False, far=False)


@two_threads
def test_far_apart_threads_still_split_the_batch(far):
    assert plan(100, 16, 128)[:3] == (2, True, True)  # they never meet
    assert plan(100, 16, 128, input_size=512)[:3] == (2, True, True)
    assert plan(100, 8, 128, training=True)[:3] == (2, True, True)


@two_threads
def test_near_threads_split_long_calls_from_less_work(near):
    for seq_len, batch, hidden in ((100, 1, 128), (20, 1, 128), (100, 1, 192), (100, 2, 128), (100, 4, 64)):
        assert plan(seq_len, batch, hidden)[:3] == (2, True, False)
        assert plan(seq_len, batch, hidden, training=True)[:3] == (2, True, False)
    assert engine.NEAR_SPLIT_MIN_STEPS == 20
    for seq_len, batch, hidden in ((19, 1, 128), (10, 1, 192), (100, 1, 96), (100, 1, 64)):
        assert plan(seq_len, batch, hidden)[0] == 1


@two_threads
def test_near_rule_needs_threads_that_run_together(near, monkeypatch):
    monkeypatch.setattr(engine, "runs_together", lambda: False)
    assert plan(100, 1, 128)[0] == 1
    assert plan(100, 4, 128)[:3] == (2, False, False)  # PARALLEL_MIN_WORK: a region a step


@two_threads
def test_plan_settings_name_the_state_only_where_a_step_may_split(monkeypatch):
    monkeypatch.setattr(placement, "far_apart", lambda: True)
    assert engine.CPU.plan_settings(1, 128, 128)[-1] is True
    assert engine.CPU.plan_settings(4, 64, 64)[-1] is True
    assert engine.CPU.plan_settings(1, 96, 96) == ()
    assert engine.CPU.plan_settings(8, 32, 32) == engine.thread_settings()  # only the batch
    with thread_limit(1):
        assert engine.CPU.plan_settings(1, 128, 128) == engine.thread_settings()


@two_threads
@pytest.mark.parametrize("training", [False, True])
def test_a_model_follows_the_threads_from_call_to_call(training, monkeypatch, rng):
    """The plan is worked out for each state (the workspace keeps both), and the numbers stay PyTorch's."""
    model = LSTM(16, 128, seed=3).train(training)
    x = rng.standard_normal((30, 4, 16)).astype(np.float32)
    state = {"far": False}
    monkeypatch.setattr(placement, "far_apart", lambda: state["far"])
    plans = []
    for far_now in (False, True, False):
        state["far"] = far_now
        ours, theirs = run_both(model, x, None)
        assert_same(ours, theirs, np.float32)
        if training:
            model.backward(np.ones_like(ours[0]))
        key = next(key for key in model._workspace._prepared if key[1:3] == (30, 4) and key[-1][-1] is far_now)
        plans.append(model._workspace._prepared[key].plan[:3])
    assert plans == [(2, True, False), (1, False, False), (2, True, False)]
