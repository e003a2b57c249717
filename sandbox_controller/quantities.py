"""Kubernetes resource quantities (``500m``, ``2``, ``512Mi``, ``1.5Gi``, ``1e3``), the one
parser for every quantity the project reads: pod templates, kubesim's nodes, ``plan``
and the size settings.

As in Kubernetes, ``m`` is milli (``500m`` CPU is half a core; ``256m`` memory is 0.256
bytes, not 256 MiB), ``k``/``M``/``G`` are powers of 1000 and ``Ki``/``Mi``/``Gi`` powers
of 1024.
"""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIXES: dict[str, Decimal] = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
# Kubernetes' grammar: a signed number, then a suffix or a decimal exponent (``1E`` is
# an exa; ``1E3`` a thousand).
_QUANTITY = re.compile(
    r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:[eE]([+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)"
)


def parse_quantity(value: str | int | float) -> Decimal:
    """The quantity as a plain number; ValueError says what a quantity looks like."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, int | float):
        number = Decimal(str(value))
        if not number.is_finite():
            raise ValueError(f"{value!r} is not a quantity")
        return number
    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a quantity such as 500m, 2, 1.5, 2Gi or 512Mi")
    digits, exponent, suffix = match.groups()
    number = Decimal(digits)  # the pattern admits only what Decimal reads
    if exponent is not None:
        return number.scaleb(int(exponent))
    return number * _SUFFIXES[suffix or ""]


def cpu_millis(value: str | int | float) -> int:
    """CPU in millicores, rounded up as the Kubernetes scheduler does (``0.1m`` takes 1m)."""
    millis = parse_quantity(value) * 1000
    return int(millis.to_integral_value(rounding="ROUND_CEILING"))


def memory_bytes(value: str | int | float) -> int:
    """Memory in bytes, rounded up as the Kubernetes scheduler does."""
    return int(parse_quantity(value).to_integral_value(rounding="ROUND_CEILING"))


def byte_size(value: str | int | float) -> int:
    """A size setting in whole bytes. A fraction of a byte is refused rather than
    rounded: it is almost always ``m`` written for MiB, as Docker's flags take it."""
    number = parse_quantity(value)
    if number < 0:
        raise ValueError(f"a size cannot be negative: {value!r}")
    if number != number.to_integral_value():
        hint = ""
        if isinstance(value, str) and value.strip().endswith("m"):
            hint = f"; m is milli, as in Kubernetes: for MiB write {value.strip()[:-1]}Mi"
        raise ValueError(f"{value!r} is {number.normalize():f} bytes, not a whole number{hint}")
    return int(number)
