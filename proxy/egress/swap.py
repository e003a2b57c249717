"""Secrets swapped in at the edge: a request to a secret's own host that carries its
placeholder gets the real value in the secret's header; a placeholder sent anywhere else
is left as it is, and reported as a leak attempt (by secret name, never by value).

Only request heads are looked at (the request line and header fields, Basic credentials
decoded): bodies pass through unread, so a placeholder in a body is neither swapped nor
counted.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field

from sandbox_controller.egress_policy import matches_any

from .controller import Secret


@dataclass(slots=True)
class SwapResult:
    headers: list[tuple[str, str]]
    swapped: list[str] = field(default_factory=list)  # secret names
    leaked: list[str] = field(default_factory=list)


def secrets_for(secrets: Sequence[Secret], host: str, port: int) -> list[Secret]:
    return [s for s in secrets if matches_any(s.hosts, host, port)]


def _basic_swap(value: str, placeholder: str, real: str) -> str | None:
    """``Basic base64(user:placeholder)`` (git's and pip's credential URLs) with the
    placeholder replaced; None when it holds none."""
    scheme, _, blob = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(blob.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if placeholder not in decoded:
        return None
    return "Basic " + base64.b64encode(decoded.replace(placeholder, real).encode()).decode()


def _carries(value: str, placeholder: str) -> bool:
    return placeholder in value or _basic_swap(value, placeholder, "") is not None


def rewrite(
    secrets: Sequence[Secret], host: str, port: int, target: str, headers: list[tuple[str, str]]
) -> SwapResult:
    result = SwapResult(headers)
    if not secrets:
        return result
    own = secrets_for(secrets, host, port)
    for secret in secrets:
        if secret in own:
            continue
        ph = secret.placeholder
        if ph in target or any(_carries(v, ph) for _, v in headers):
            result.leaked.append(secret.name)
    if not own:
        return result
    out = list(headers)
    for secret in own:
        for i, (name, value) in enumerate(out):
            if name.lower() != secret.header or not _carries(value, secret.placeholder):
                continue
            if value == secret.header_with_placeholder():
                new = secret.header_value()
            else:  # another shape ("token PH", Basic): the placeholder replaced in place
                new = _basic_swap(value, secret.placeholder, secret.value) or value.replace(
                    secret.placeholder, secret.value
                )
            out[i] = (name, new)
            result.swapped.append(secret.name)
    result.headers = out
    return result
