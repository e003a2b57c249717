from sandbox_controller.backends.expectations import CreateExpectations
from sandbox_controller.clock import ManualClock


def test_expectation_held_until_observed() -> None:
    clock = ManualClock()
    exp = CreateExpectations(clock, timeout=30)
    exp.expect("a")
    exp.expect("b")
    assert exp.pending() == 2 and exp.is_pending("a")
    assert exp.observe("a") is True
    assert exp.observe("a") is False  # a second watch event for it is no news
    assert exp.pending() == 1 and not exp.is_pending("a")


def test_expectation_lapses() -> None:
    clock = ManualClock()
    exp = CreateExpectations(clock, timeout=30)
    exp.expect("a")
    clock.advance(29.9)
    assert exp.pending() == 1
    clock.advance(0.2)
    assert exp.pending() == 0 and not exp.is_pending("a")
