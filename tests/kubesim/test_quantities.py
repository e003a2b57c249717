import pytest

from sandbox_controller.kubesim.quantities import cpu_millis, memory_bytes


@pytest.mark.parametrize(
    ("text", "millis"), [("500m", 500), ("1", 1000), ("2.5", 2500), ("0.1m", 1), (2, 2000)]
)
def test_cpu(text: str, millis: int) -> None:
    assert cpu_millis(text) == millis


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2Gi", 2 * 2**30),
        ("512Mi", 512 * 2**20),
        ("1G", 10**9),
        ("1e3", 1000),
        ("128974848", 128974848),
    ],
)
def test_memory(text: str, size: int) -> None:
    assert memory_bytes(text) == size


def test_bad_quantity() -> None:
    with pytest.raises(ValueError):
        memory_bytes("2Gb")
