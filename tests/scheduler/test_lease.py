"""The lease's usable time by this process's own clock (scheduler/lease.py), on numbers
passed by hand: what the write guard allows and when."""

from __future__ import annotations

import pytest

from sandbox_controller.scheduler.lease import LeaseTerm

TTL, MARGIN, GAP = 4.0, 1.0, 2.0


def term() -> LeaseTerm:
    return LeaseTerm(TTL, MARGIN, max_gap=GAP)


def test_nothing_is_usable_before_the_first_renewal() -> None:
    assert not term().usable(0.0)


def test_a_lease_is_usable_until_sent_plus_ttl_minus_margin() -> None:
    lease = term()
    lease.renewed(sent_at=100.0)
    assert lease.usable(102.999)
    assert not lease.usable(103.0)  # the database may see it end at 104: stop before


def test_a_late_answer_does_not_lengthen_the_lease() -> None:
    # The query was sent at 100 and answered at 102.5 (a slow database, or a pause
    # while it was in flight): the lease still counts from 100.
    lease = term()
    lease.renewed(sent_at=100.0)
    lease.renewed(sent_at=99.0)  # an older renewal answered even later changes nothing
    assert not lease.usable(103.0)


def test_a_pause_makes_the_lease_unusable_until_renewed_again() -> None:
    lease = term()
    lease.tick(100.0)
    lease.renewed(sent_at=100.0)
    assert lease.tick(101.0)
    lease.renewed(sent_at=101.0)  # usable until 104 by arithmetic
    # Woken 2.5 s after the last tick: still before 104, but a process that was not
    # running knows nothing of what happened meanwhile.
    assert not lease.tick(103.5)
    assert not lease.usable(103.5)
    lease.renewed(sent_at=103.5)
    assert lease.usable(103.6)


def test_lost_ends_it_at_once() -> None:
    lease = term()
    lease.renewed(sent_at=100.0)
    lease.lost()
    assert not lease.usable(100.0)


def test_a_margin_as_long_as_the_lease_is_refused() -> None:
    with pytest.raises(ValueError):
        LeaseTerm(4.0, 4.0, max_gap=2.0)


def test_the_first_tick_is_no_pause() -> None:
    # A fresh start on a busy machine: nothing came before to have been paused.
    lease = term()
    lease.renewed(sent_at=100.0)
    assert lease.tick(100.0 + 10 * GAP)
    assert lease.usable(100.5)


def test_only_the_sleep_counts_not_a_slow_call_before_it() -> None:
    lease = term()
    lease.tick(100.0)
    # A renewal that took 5 s (longer than the gap) before the keeper slept again.
    lease.resting(105.0)
    lease.renewed(sent_at=105.0)
    assert lease.tick(106.0)  # slept 1 s: on time
    lease.resting(106.0)
    assert not lease.tick(106.0 + GAP + 0.1)  # slept past the gap: a pause
