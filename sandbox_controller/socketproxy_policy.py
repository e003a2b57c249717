"""What the Docker socket proxy lets through: pure checks, no I/O (socketproxy.py does
the I/O).

It allows, it does not forbid. A route is on a list, with the query parameters it may
carry; a container create must be, key for key, the create the Docker backend sends
(docker_spec.create_template), with only the values the controller's settings choose
left free; a network create must be the sandbox network (docker_spec.network_spec); an
archive upload must be the CA bundle, to its one directory (check_archive).

Docker's JSON decoder matches a struct's keys case-insensitively and keeps the last of
two duplicates, so ``"user": "0"`` after ``"User": "10001"`` would run as root. Here a
key must be spelled exactly as the backend spells it, two keys that differ only in case
(at any depth) refuse the body, and what is forwarded is this module's own encoding of
what it checked, never the client's bytes.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .backends.base import LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY
from .backends.docker_spec import MAX_BUNDLE, bundle_archive, create_template, network_spec
from .egress_env import BUNDLE_NAME, DOCKER_BUNDLE_DIR

_VERSION = r"(?P<version>/v[0-9]{1,2}\.[0-9]{1,3})?"
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
# The values a create leaves to the controller's settings; every other HostConfig value
# must be the template's.
FREE_HOST_KEYS = frozenset({"NanoCpus", "Memory", "MemorySwap", "Tmpfs"})
MAX_LABELS = 64
MAX_ENV = 64
MAX_ID = 10**12  # uids and gids are 32-bit; this only keeps int() small


class Refused(Exception):
    """A request the proxy does not pass on: its answer's status and message."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Policy:
    """The stack the proxy serves: its sandboxes' label, user, network and image."""

    instance: str
    user: str
    network: str
    image: str
    runtime: str | None = None
    # The network is the internal egress network (SANDBOX_EGRESS not off), of this subnet.
    internal: bool = False
    subnet: str | None = None

    def __post_init__(self) -> None:
        if self.network in ("bridge", "host", "none", "default") or ":" in self.network:
            raise ValueError(f"the sandbox network must be a network of its own: {self.network}")


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    kind: str  # what the proxy must check: see socketproxy.py
    query: frozenset[str] = frozenset()


def _route(method: str, path: str, kind: str, *query: str) -> Route:
    return Route(method, re.compile(f"^{_VERSION}{path}$"), kind, frozenset(query))


_CONTAINER = rf"/containers/(?P<ref>{_ID})"
ROUTES = [
    _route("GET", "/_ping", "plain"),
    _route("HEAD", "/_ping", "plain"),
    _route("GET", "/version", "plain"),
    _route("GET", "/info", "plain"),
    _route("GET", "/events", "scoped", "since", "until", "filters", "stream"),
    _route("GET", rf"/images/(?P<image>{_ID}(/{_ID})*(:{_ID})?)/json", "image"),
    _route("GET", "/containers/json", "scoped", "all", "filters", "limit", "size"),
    _route("POST", "/containers/create", "create", "name"),
    _route("GET", f"{_CONTAINER}/json", "container", "size"),
    _route("POST", f"{_CONTAINER}/start", "container"),
    _route("POST", f"{_CONTAINER}/stop", "container", "t", "signal"),
    _route("POST", f"{_CONTAINER}/kill", "container", "signal"),
    _route("DELETE", _CONTAINER, "container", "force", "v"),
    # The CA bundle, into a created sandbox's own volume (egress on; check_archive).
    _route("PUT", f"{_CONTAINER}/archive", "archive", "path"),
    _route("GET", rf"/networks/(?P<network>{_ID})", "network"),
    _route("POST", "/networks/create", "network-create"),
]


def route(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route a request takes, with the parts of its path; None: refused."""
    for candidate in ROUTES:
        if candidate.method == method and (match := candidate.pattern.match(path)):
            return candidate, {k: v for k, v in match.groupdict().items() if v is not None}
    return None


def allowed(method: str, path: str) -> bool:
    return route(method, path) is not None


def check_query(allowed_names: Iterable[str], names: Iterable[str]) -> None:
    extra = sorted(set(names) - set(allowed_names))
    if extra:
        raise Refused(f"query parameter {', '.join(extra)} is not allowed")


# -- decoding --------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        # Go folds a few non-ASCII letters onto ASCII ones (the Kelvin sign onto k).
        if not key.isascii():
            raise Refused(f"key {key!r} is not ASCII", 400)
        folded = key.lower()
        if folded in seen:
            raise Refused(f"duplicate key {key!r} (keys are compared ignoring case)", 400)
        seen.add(folded)
    return dict(pairs)


def decode(body: bytes) -> Any:
    """A JSON document in which no object holds two keys that differ only in case."""
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused("the body is not a JSON document", 400) from None


def encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON (True is not 1)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Refused(f"{where} must be an object")
    return value


def _exact_keys(value: dict[str, Any], template: Mapping[str, Any], where: str) -> None:
    extra = sorted(set(value) - set(template))
    if extra:
        raise Refused(f"{', '.join(f'{where}{k}' for k in extra)}: not allowed")
    missing = sorted(set(template) - set(value))
    if missing:
        raise Refused(f"{', '.join(f'{where}{k}' for k in missing)}: missing")


# -- a container create ----------------------------------------------------------------


def check_create(document: Any, policy: Policy, image_id: str) -> dict[str, Any]:
    """The create, if it is a sandbox of this stack as the backend makes it."""
    template = create_template(policy.network, policy.user, policy.runtime, policy.internal)
    config = _object(document, "the body")
    _exact_keys(config, template, "")
    host = _object(config["HostConfig"], "HostConfig")
    _exact_keys(host, template["HostConfig"], "HostConfig.")
    for key, expected in template["HostConfig"].items():
        if key not in FREE_HOST_KEYS and not _same(host[key], expected):
            raise Refused(f"HostConfig.{key} must be {json.dumps(expected)}")
    for key in ("NanoCpus", "Memory"):
        if type(host[key]) is not int or host[key] <= 0:
            raise Refused(f"HostConfig.{key} must be a positive integer")
    if not _same(host["MemorySwap"], host["Memory"]):
        raise Refused("HostConfig.MemorySwap must equal HostConfig.Memory (no swap)")
    _check_tmpfs(_object(host["Tmpfs"], "HostConfig.Tmpfs"), template["HostConfig"]["Tmpfs"])
    if not _same(config["ExposedPorts"], template["ExposedPorts"]):
        raise Refused(f"ExposedPorts must be {json.dumps(template['ExposedPorts'])}")
    # Egress on: the one anonymous volume, the CA bundle's (never a named one, which
    # another container could share, nor a host path).
    if "Volumes" in template and not _same(config["Volumes"], template["Volumes"]):
        raise Refused(f"Volumes must be {json.dumps(template['Volumes'])}")
    if config["Image"] != image_id:
        raise Refused(f"the image must be {policy.image} ({image_id})")
    why = user_refusal(config["User"], policy.user)
    if why is not None:
        raise Refused(why)
    _check_labels(config["Labels"], policy)
    env = config["Env"]
    if not isinstance(env, list) or len(env) > MAX_ENV or not all(isinstance(e, str) for e in env):
        raise Refused(f"Env must be a list of at most {MAX_ENV} strings")
    return config


def _tmpfs_options(value: Any) -> set[str]:
    """A tmpfs's options, its size whatever it is (one positive number)."""
    if not isinstance(value, str):
        raise Refused("a tmpfs's options must be a string")
    options = set()
    for option in value.split(","):
        if option.startswith("size="):
            if not re.fullmatch(r"[1-9][0-9]{0,15}", option[5:]):
                raise Refused(f"tmpfs option {option} is not allowed")
            option = "size="
        options.add(option)
    return options


def _check_tmpfs(tmpfs: dict[str, Any], template: Mapping[str, str]) -> None:
    _exact_keys(tmpfs, template, "HostConfig.Tmpfs.")
    for path, expected in template.items():
        if _tmpfs_options(tmpfs[path]) != _tmpfs_options(expected):
            raise Refused(f"HostConfig.Tmpfs.{path} must be like {expected!r}")


def _check_labels(labels: Any, policy: Policy) -> None:
    if (
        not isinstance(labels, dict)
        or len(labels) > MAX_LABELS
        or not all(isinstance(v, str) for v in labels.values())
    ):
        raise Refused(f"Labels must be an object of at most {MAX_LABELS} strings")
    if not owned(labels, policy):
        raise Refused(f"a container must carry the labels of this stack ({policy.instance})")


def owned(labels: Mapping[str, Any], policy: Policy) -> bool:
    """Whether a container with these labels is one of this stack's sandboxes."""
    return (
        labels.get(LABEL_INSTANCE) == policy.instance and labels.get(LABEL_MANAGED_BY) == MANAGED_BY
    )


def user_refusal(user: Any, configured: str) -> str | None:
    """Why a container may not run as ``user``: it must be the configured user or a
    numeric uid (and gid) of at least 1, compared as numbers; never root."""
    if not isinstance(user, str):
        return "User must be a string"
    numeric = re.fullmatch(r"([0-9]{1,12})(?::([0-9]{1,12}))?", user)
    if numeric is not None:
        ids = [int(part) for part in numeric.groups() if part is not None]
        if all(1 <= i < MAX_ID for i in ids):
            return None
    elif user == configured and all(
        part not in ("", "root") and not part.isdigit() for part in user.split(":")
    ):
        return None  # a name the operator configured
    return f"containers must run as {configured} or another non-root numeric user, not {user!r}"


# -- the CA bundle upload --------------------------------------------------------------


def check_archive(path: str | None, body: bytes, policy: Policy) -> bytes:
    """A bundle upload, if it is the backend's: egress on, to DOCKER_BUNDLE_DIR (the
    container's own volume), one regular file BUNDLE_NAME of PEM text. What is forwarded
    is a tar made here (root's, read-only), never the client's bytes: no link, no other
    name, no path that climbs out."""
    if not policy.internal:
        raise Refused("no CA bundle is uploaded with egress off")
    if path != DOCKER_BUNDLE_DIR:
        raise Refused(f"an archive may be uploaded only to {DOCKER_BUNDLE_DIR}, not {path!r}")
    try:
        # "r:": uncompressed only, so what is read is no larger than the body.
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as archive:
            members = archive.getmembers()
            if len(members) != 1 or not members[0].isreg() or members[0].name != BUNDLE_NAME:
                raise Refused(f"the archive must hold one regular file, {BUNDLE_NAME}")
            if members[0].size > MAX_BUNDLE:
                raise Refused(f"the bundle is larger than {MAX_BUNDLE} bytes")
            extracted = archive.extractfile(members[0])
            pem = extracted.read() if extracted is not None else b""
    except tarfile.TarError:
        raise Refused("the body is not a tar archive", 400) from None
    if not _PEM_TEXT.fullmatch(pem) or b"-----BEGIN CERTIFICATE-----" not in pem:
        raise Refused("the bundle must be PEM certificates (ASCII text)")
    return bundle_archive(pem)


_PEM_TEXT = re.compile(rb"[\x20-\x7e\t\r\n]*")


# -- a network create, and list filters -----------------------------------------------


def check_network(document: Any, policy: Policy) -> dict[str, Any]:
    expected = network_spec(policy.network, policy.internal, policy.subnet)
    if not _same(document, expected):
        raise Refused(f"only the sandbox network may be created: {json.dumps(expected)}")
    return expected


def scoped_filters(raw: str | None, policy: Policy) -> str:
    """A list's or the event stream's filters, narrowed to this stack's containers
    (Docker ANDs label filters)."""
    filters: dict[str, dict[str, bool]] = {}
    if raw:
        document = _object(decode(raw.encode()), "filters")
        for key, values in document.items():
            if isinstance(values, dict):
                values = list(values)
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise Refused("filters must map names to lists of strings", 400)
            filters[key] = dict.fromkeys(values, True)
    labels = filters.setdefault("label", {})
    labels[f"{LABEL_INSTANCE}={policy.instance}"] = True
    labels[f"{LABEL_MANAGED_BY}={MANAGED_BY}"] = True
    return json.dumps(filters)
