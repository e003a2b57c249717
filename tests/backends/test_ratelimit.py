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


async def test_bucket_rate_over_a_window() -> None:
    clock = ManualClock()
    bucket = TokenBucket(qps=5, burst=2, clock=clock)
    grants = []
    for _ in range(12):
        delay = bucket.reserve(clock.now())
        grants.append(clock.now() + delay)
    # 12 calls: 2 from the burst, 10 at 5/s -> the last at t+2.0s.
    assert max(grants) - clock.now() == pytest.approx(2.0)
    in_first_second = sum(1 for g in grants if g - clock.now() < 1.0)
    assert in_first_second <= 2 + 5


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
