import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def threads_near(monkeypatch):
    """The plans as where Numba's threads run near each other (``placement.far_apart`` false), whatever the
    machine's state while the tests run: a virtual machine moves its CPUs, and the plans follow
    (tests/test_placement.py checks the measurement itself)."""
    from nblstm import placement
    monkeypatch.setattr(placement, "far_apart", lambda: False)
