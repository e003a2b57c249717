import pytest

from sandbox_controller.backends.ratelimit import TokenBucket, parse_retry_after
from sandbox_controller.clock import ManualClock


def test_bucket_allows_burst_then_qps() -> None:
    clock = ManualClock()
    bucket = TokenBucket(qps=10, burst=3, clock=clock)
    now = clock.now()
    assert [bucket.reserve(now) for _ in range(3)] == [0, 0, 0]
    # Further calls queue up at 1/qps apart.
    assert [round(bucket.reserve(now), 3) for _ in range(3)] == [0.1, 0.2, 0.3]
    # After a long pause the bucket holds at most `burst` tokens again.
    later = now + 100
    assert [bucket.reserve(later) for _ in range(3)] == [0, 0, 0]
    assert bucket.reserve(later) == pytest.approx(0.1)


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
