"""Egress secrets: what one is, its checks, its placeholder, and its value sealed at rest.

A secret (POST /sessions ``secrets``, or the deployment's ``SANDBOX_EGRESS_SECRETS_FILE``)
never reaches the sandbox: the sandbox's env holds a placeholder, and the egress proxy
puts ``format`` with ``{value}`` replaced into the ``header`` of requests to the secret's
``hosts`` only. At rest the value is sealed with AES-GCM under a key derived (HKDF) from
the token secret, bound to (session id, name) so that a sealed value moved to another
row does not open; the previous token secrets still open what they sealed, so a
rotation keeps every live session's secrets. Pure but for reading the secrets file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .egress_policy import PatternError, parse_pattern

# Limits, like a claim's env (api/request_bodies.py).
SECRETS_MAX = 16
SECRET_NAME_MAX = 128
SECRET_VALUE_MAX = 8 * 1024
SECRETS_TOTAL_MAX = 32 * 1024  # values
SECRET_HOSTS_MAX = 16
HEADER_NAME_MAX = 128
FORMAT_MAX = 256
SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# An HTTP field name (RFC 9110 token).
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
# What may go into a header value: visible ASCII, space and tab (never CR or LF: a value
# holding them could add a header of its own).
HEADER_TEXT_PATTERN = r"^[\t\x20-\x7e]*$"
DEFAULT_HEADER = "Authorization"
DEFAULT_FORMAT = "Bearer {value}"
VALUE_MARK = "{value}"
# Headers the proxy itself owns (framing, routing, its own auth): never a secret's.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
    }
)
PLACEHOLDER_PREFIX = "sbx_ph_"

_NAME = re.compile(SECRET_NAME_PATTERN)
_HEADER = re.compile(HEADER_NAME_PATTERN)
_HEADER_TEXT = re.compile(HEADER_TEXT_PATTERN)
_SEAL_INFO = b"agent-sandbox egress secrets v1"
_PLACEHOLDER_CONTEXT = b"agent-sandbox egress placeholder:"
_SEAL_VERSION = b"\x01"
_KEY_ID_BYTES = 8
_NONCE_BYTES = 12


class SecretError(ValueError):
    """A secret that is not one; the message names it and says what is wrong."""


@dataclass(frozen=True)
class SecretSpec:
    """A secret as given: never shown whole (repr leaves the value out)."""

    name: str
    value: str = field(repr=False)
    hosts: tuple[str, ...]
    header: str = DEFAULT_HEADER
    format: str = DEFAULT_FORMAT

    def public(self) -> dict[str, Any]:
        """What a GET may show of it: never the value, nor its placeholder."""
        return {"name": self.name, "hosts": list(self.hosts), "header": self.header}


def check_name(name: str) -> str | None:
    if not _NAME.match(name) or len(name) > SECRET_NAME_MAX:
        return f"name {name[:40]!r} must match {SECRET_NAME_PATTERN}, at most {SECRET_NAME_MAX}"
    return None


def check_secret(spec: SecretSpec) -> SecretSpec:
    """The secret with its hosts in canonical form; SecretError naming what is wrong."""
    problem = check_name(spec.name)
    if problem:
        raise SecretError(problem)
    where = f"secret {spec.name}"
    if len(spec.value) > SECRET_VALUE_MAX or not _HEADER_TEXT.match(spec.value):
        raise SecretError(
            f"{where}: the value must be at most {SECRET_VALUE_MAX} characters of visible "
            "ASCII, space or tab (it goes into a header)"
        )
    if not spec.value:
        raise SecretError(f"{where}: the value is empty")
    if not 1 <= len(spec.hosts) <= SECRET_HOSTS_MAX:
        raise SecretError(f"{where}: hosts must list 1 to {SECRET_HOSTS_MAX} host patterns")
    try:
        hosts = tuple(dict.fromkeys(str(parse_pattern(h)) for h in spec.hosts))
    except PatternError as exc:
        raise SecretError(f"{where}: hosts: {exc}") from None
    if not _HEADER.match(spec.header) or len(spec.header) > HEADER_NAME_MAX:
        raise SecretError(f"{where}: header {spec.header[:40]!r} is not an HTTP header name")
    if spec.header.lower() in RESERVED_HEADERS:
        raise SecretError(f"{where}: header {spec.header!r} is the proxy's own")
    if (
        VALUE_MARK not in spec.format
        or len(spec.format) > FORMAT_MAX
        or not _HEADER_TEXT.match(spec.format)
    ):
        raise SecretError(
            f"{where}: format must contain {VALUE_MARK} and be at most {FORMAT_MAX} "
            "characters of visible ASCII, space or tab"
        )
    return SecretSpec(spec.name, spec.value, hosts, spec.header, spec.format)


def check_secrets(specs: Sequence[SecretSpec], taken: Iterable[str] = ()) -> tuple[SecretSpec, ...]:
    """A whole list: each checked, names unique (and none of ``taken``: the deployment's
    secrets and the claim's env names), the count and total within the limits."""
    if len(specs) > SECRETS_MAX:
        raise SecretError(f"at most {SECRETS_MAX} secrets, got {len(specs)}")
    total = sum(len(s.value) for s in specs)
    if total > SECRETS_TOTAL_MAX:
        raise SecretError(f"secret values total {total} characters, over {SECRETS_TOTAL_MAX}")
    seen = set(taken)
    checked = []
    for spec in specs:
        if spec.name in seen:
            raise SecretError(
                f"secret {spec.name}: the name is taken (given twice, or an env name)"
            )
        seen.add(spec.name)
        checked.append(check_secret(spec))
    return tuple(checked)


def spec_of(item: Mapping[str, Any]) -> SecretSpec:
    """A secret from a JSON/YAML mapping (the secrets file's entries)."""
    if not isinstance(item, Mapping):
        raise SecretError("each secret is a mapping with name, value and hosts")
    unknown = set(item) - {"name", "value", "hosts", "header", "format"}
    if unknown:
        raise SecretError(f"unknown keys: {', '.join(sorted(map(str, unknown)))}")
    name, value, hosts = item.get("name"), item.get("value"), item.get("hosts")
    header, fmt = item.get("header", DEFAULT_HEADER), item.get("format", DEFAULT_FORMAT)
    if not all(isinstance(x, str) for x in (name, value, header, fmt)):
        raise SecretError("name, value, header and format are strings")
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise SecretError(f"secret {name}: hosts is a list of host patterns")
    return SecretSpec(str(name), str(value), tuple(hosts), str(header), str(fmt))


def load_secrets_file(path: str) -> tuple[SecretSpec, ...]:
    """The deployment's secrets (YAML or JSON: a list shaped like POST /sessions
    ``secrets``). SecretError says what is wrong, never quoting a value."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SecretError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        raise SecretError(f"{path} is not valid YAML or JSON") from None
    if document is None:
        return ()
    if not isinstance(document, list):
        raise SecretError(f"{path}: a list of secrets")
    return check_secrets([spec_of(item) for item in document])


def new_placeholder() -> str:
    """A session secret's placeholder: random, so it tells nothing of the value."""
    return PLACEHOLDER_PREFIX + secrets.token_hex(16)


def deployment_placeholder(key: bytes, create_id: str, name: str) -> str:
    """A deployment secret's placeholder in the pod made by ``create_id``: derived (like
    the claim secret) so that a warm pod carries it in its env from creation and any
    leader computes it again; one pod's placeholder is no other pod's."""
    message = _PLACEHOLDER_CONTEXT + create_id.encode() + b":" + name.encode()
    return PLACEHOLDER_PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def render(spec_format: str, value: str) -> str:
    """The header value: the format with its ``{value}`` marks replaced (no other
    formatting: braces elsewhere are kept as they are)."""
    return spec_format.replace(VALUE_MARK, value)


class Sealer:
    """AES-GCM under keys derived from the token secrets: the first seals, every one
    opens what it sealed (each sealed value names its key by an id)."""

    def __init__(self, token_secrets: Sequence[bytes]) -> None:
        if not token_secrets:
            raise ValueError("a sealer needs a token secret")
        self._keys: dict[bytes, AESGCM] = {}
        self._first = b""
        for secret in token_secrets:
            key = HKDF(hashes.SHA256(), 32, salt=None, info=_SEAL_INFO).derive(secret)
            key_id = hashlib.sha256(key).digest()[:_KEY_ID_BYTES]
            self._keys.setdefault(key_id, AESGCM(key))
            self._first = self._first or key_id

    @staticmethod
    def _bound(session_id: str, name: str) -> bytes:
        return json.dumps([session_id, name]).encode()

    def seal(self, session_id: str, name: str, value: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._keys[self._first].encrypt(
            nonce, value.encode(), self._bound(session_id, name)
        )
        return _SEAL_VERSION + self._first + nonce + sealed

    def open(self, session_id: str, name: str, sealed: bytes) -> str | None:
        """The value, or None when no key of ours sealed it for this (session, name)."""
        head = len(_SEAL_VERSION)
        if sealed[:head] != _SEAL_VERSION:
            return None
        key_id = sealed[head : head + _KEY_ID_BYTES]
        nonce = sealed[head + _KEY_ID_BYTES : head + _KEY_ID_BYTES + _NONCE_BYTES]
        aead = self._keys.get(key_id)
        if aead is None:
            return None
        try:
            body = sealed[head + _KEY_ID_BYTES + _NONCE_BYTES :]
            return aead.decrypt(nonce, body, self._bound(session_id, name)).decode()
        except (InvalidTag, UnicodeDecodeError):
            return None
