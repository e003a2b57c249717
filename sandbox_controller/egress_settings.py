"""The egress settings parsed: what config.py checks once and everyone reads after.

A bad pattern, CIDR, proxy URL or secrets file is a ValueError naming its variable, which
load_settings turns into a ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from .credentials import split_list
from .egress_policy import HostPattern, IPNetwork, PatternError, parse_cidrs, parse_patterns
from .egress_secrets import SecretError, SecretSpec, load_secrets_file


@dataclass(frozen=True)
class EgressLists:
    allow: tuple[HostPattern, ...] = ()
    grantable: tuple[HostPattern, ...] = ()
    deny_cidrs: tuple[IPNetwork, ...] = ()
    no_proxy: tuple[str, ...] = ()
    secrets: tuple[SecretSpec, ...] = ()

    @property
    def allow_text(self) -> list[str]:
        return [str(p) for p in self.allow]


def parse_egress_lists(
    *,
    allow_text: str,
    grantable_text: str,
    deny_text: str,
    no_proxy_text: str,
    proxy_url: str | None,
    secrets_file: str | None,
) -> EgressLists:
    def patterns(variable: str, text: str) -> tuple[HostPattern, ...]:
        try:
            return parse_patterns(text)
        except PatternError as exc:
            raise ValueError(f"{variable}: {exc}") from None

    allow = patterns("SANDBOX_EGRESS_ALLOW", allow_text)
    grantable = patterns("SANDBOX_EGRESS_GRANTABLE", grantable_text)
    try:
        deny = parse_cidrs(deny_text)
    except PatternError as exc:
        raise ValueError(f"SANDBOX_EGRESS_DENY_CIDRS: {exc}") from None
    no_proxy = split_list(no_proxy_text)
    for entry in no_proxy:
        if any(c in entry for c in " /@\t"):
            raise ValueError(f"SANDBOX_EGRESS_NO_PROXY: {entry!r} is not a host or domain")
    if proxy_url is not None:
        parts = urlsplit(proxy_url)
        if (
            parts.scheme != "http"
            or not parts.hostname
            or parts.username
            or parts.path
            not in (
                "",
                "/",
            )
        ):
            raise ValueError(
                "SANDBOX_EGRESS_PROXY_URL: an http://host:port URL without credentials or "
                "path (each sandbox is given its own credentials)"
            )
    found: tuple[SecretSpec, ...] = ()
    if secrets_file:
        try:
            found = load_secrets_file(secrets_file)
        except SecretError as exc:
            raise ValueError(f"SANDBOX_EGRESS_SECRETS_FILE: {exc}") from None
    return EgressLists(allow, grantable, deny, no_proxy, found)
