"""The one quantity parser: Kubernetes' meaning of every suffix, wherever a quantity is
read (pod templates, kubesim, ``plan``, the size settings)."""

from decimal import Decimal

import pytest

from sandbox_controller.config import ConfigError, load_settings
from sandbox_controller.quantities import byte_size, cpu_millis, memory_bytes, parse_quantity

MI = 2**20


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),  # m is milli
        ("256m", "0.256"),  # ... for memory too: not 256 MiB
        ("2", "2"),
        ("1.5", "1.5"),
        (".5", "0.5"),
        ("1k", "1000"),
        ("1Ki", "1024"),
        ("1M", "1000000"),
        ("512Mi", str(512 * MI)),
        ("1G", "1000000000"),
        ("2Gi", str(2 * 2**30)),
        ("1e3", "1000"),
        ("1E3", "1000"),  # an exponent, where a bare E is exa
        ("1E", str(10**18)),
        ("100n", "0.0000001"),
        (" 2Gi ", str(2 * 2**30)),
        (2, "2"),
        (0.5, "0.5"),
    ],
)
def test_parse_quantity(text: str | int | float, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize(
    "text", ["", "2Gb", "1g", "1 Gi", "Mi", "1.2.3", "2GiB", "0x10", "1e", "--1", True]
)
def test_what_is_not_a_quantity(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("text", "millis"), [("500m", 500), ("1", 1000), ("2.5", 2500), ("0.1m", 1), (2, 2000)]
)
def test_cpu_in_millicores_rounds_up(text: str, millis: int) -> None:
    assert cpu_millis(text) == millis


@pytest.mark.parametrize(
    ("text", "size"),
    [("2Gi", 2 * 2**30), ("512Mi", 512 * MI), ("1G", 10**9), ("1e3", 1000), ("256m", 1)],
)
def test_memory_bytes_round_up_as_the_scheduler_does(text: str, size: int) -> None:
    assert memory_bytes(text) == size


def test_a_size_setting_is_whole_bytes() -> None:
    assert byte_size("1.5Gi") == 1536 * MI
    assert byte_size("64Ki") == 65536
    with pytest.raises(ValueError, match="for MiB write 256Mi"):
        byte_size("256m")
    with pytest.raises(ValueError, match="negative"):
        byte_size("-1Gi")


def test_docker_m_is_refused_in_a_setting_not_read_as_milli_bytes() -> None:
    # Docker's --memory 256m means 256 MiB; as a Kubernetes quantity it is 0.256 bytes.
    # Neither meaning is guessed: the setting is refused, naming the variable and the fix.
    with pytest.raises(ConfigError, match=r"SANDBOX_DOCKER_MEMORY.*256Mi"):
        load_settings(docker_memory="256m")


@pytest.mark.parametrize(("text", "cpus"), [("500m", 0.5), ("1.5", 1.5), ("2", 2.0)])
def test_the_docker_cpus_setting_reads_cpu_quantities(text: str, cpus: float) -> None:
    assert load_settings(docker_cpus=text).docker_cpus == cpus
