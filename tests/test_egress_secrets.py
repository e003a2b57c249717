"""egress_secrets: sealing (bound, rotated), placeholders, checks, the secrets file; and
the egress settings' errors naming their variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_controller.config import ConfigError, load_settings
from sandbox_controller.egress_secrets import (
    PLACEHOLDER_PREFIX,
    Sealer,
    SecretError,
    SecretSpec,
    check_secrets,
    deployment_placeholder,
    load_secrets_file,
    new_placeholder,
    render,
)


def test_sealed_value_opens_only_for_its_session_and_name() -> None:
    sealer = Sealer([b"current"])
    sealed = sealer.seal("s1", "TOKEN", "ghp_value")
    assert b"ghp_value" not in sealed
    assert sealer.open("s1", "TOKEN", sealed) == "ghp_value"
    assert sealer.open("s2", "TOKEN", sealed) is None  # moved to another row: no
    assert sealer.open("s1", "OTHER", sealed) is None
    assert sealer.open("s1", "TOKEN", sealed[:-1] + bytes([sealed[-1] ^ 1])) is None
    assert sealer.seal("s1", "TOKEN", "ghp_value") != sealed  # a fresh nonce each time


def test_a_rotation_keeps_old_values_open() -> None:
    old = Sealer([b"old-secret"]).seal("s1", "TOKEN", "v")
    rotated = Sealer([b"new-secret", b"old-secret"])
    assert rotated.open("s1", "TOKEN", old) == "v"
    assert Sealer([b"new-secret"]).open("s1", "TOKEN", old) is None
    # New values seal under the current secret.
    fresh = rotated.seal("s1", "TOKEN", "w")
    assert Sealer([b"new-secret"]).open("s1", "TOKEN", fresh) == "w"


def test_placeholders() -> None:
    one, two = new_placeholder(), new_placeholder()
    assert one != two and one.startswith(PLACEHOLDER_PREFIX) and len(one) == 39
    stable = deployment_placeholder(b"k", "create-1", "NPM_TOKEN")
    assert stable == deployment_placeholder(b"k", "create-1", "NPM_TOKEN")
    assert stable != deployment_placeholder(b"k", "create-2", "NPM_TOKEN")
    assert stable != deployment_placeholder(b"other", "create-1", "NPM_TOKEN")
    assert render("token {value} {x}", "v") == "token v {x}"


def spec(**kw: object) -> SecretSpec:
    values: dict[str, object] = {"name": "T", "value": "the-value", "hosts": ("a.example",)}
    values.update(kw)
    return SecretSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (spec(format="Bearer"), "{value}"),
        (spec(header="Proxy-Authorization"), "proxy's own"),
        (spec(header="Bad Header"), "not an HTTP header name"),
        (spec(value="the-value\nb"), "visible ASCII"),
        (spec(value=""), "empty"),
        (spec(hosts=()), "1 to 16"),
        (spec(hosts=("a.*.example",)), "hosts:"),
        (spec(name="lower-case"), "must match"),
    ],
)
def test_bad_secrets_say_why_never_the_value(bad: SecretSpec, says: str) -> None:
    with pytest.raises(SecretError) as raised:
        check_secrets([bad])
    assert says in str(raised.value) and "the-value" not in str(raised.value)


def test_names_unique_and_not_taken() -> None:
    with pytest.raises(SecretError, match="taken"):
        check_secrets([spec(), spec()])
    with pytest.raises(SecretError, match="taken"):
        check_secrets([spec()], taken={"T"})
    with pytest.raises(SecretError, match="at most 16"):
        check_secrets([spec(name=f"T{i}") for i in range(17)])


def test_secrets_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text(
        "- name: NPM_TOKEN\n  value: npm-123\n  hosts: [registry.npmjs.org, 'REGISTRY.example.']\n"
        "- {name: PIP, value: p, hosts: [pypi.example], header: X-Token, format: '{value}'}\n"
    )
    found = load_secrets_file(str(path))
    assert [s.name for s in found] == ["NPM_TOKEN", "PIP"]
    assert found[0].hosts == ("registry.npmjs.org", "registry.example")
    assert (found[0].header, found[0].format) == ("Authorization", "Bearer {value}")
    assert "npm-123" not in repr(found)
    path.write_text("- {name: X, value: secret-value, hosts: [a.example], extra: 1}\n")
    with pytest.raises(SecretError, match="unknown keys: extra"):
        load_secrets_file(str(path))


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        (
            "egress_allow",
            "pypi.org, https://x.example",
            "SANDBOX_EGRESS_ALLOW: 'https://x.example'",
        ),
        ("egress_grantable", "a.*.example", "SANDBOX_EGRESS_GRANTABLE: 'a.*.example'"),
        (
            "egress_deny_cidrs",
            "10.0.0.0/8, 10.300.0.0/16",
            "SANDBOX_EGRESS_DENY_CIDRS: '10.300.0.0/16'",
        ),
        ("egress_proxy_url", "https://u:p@egress:3128", "SANDBOX_EGRESS_PROXY_URL"),
        ("egress_no_proxy", "a.example, b example", "SANDBOX_EGRESS_NO_PROXY"),
        ("egress_secrets_file", "/nonexistent/secrets.yaml", "SANDBOX_EGRESS_SECRETS_FILE"),
    ],
)
def test_bad_egress_settings_name_their_variable(variable: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match="^" + says.replace("*", r"\*").replace(".", r"\.")):
        load_settings(**{variable: value})


def test_egress_settings_parsed() -> None:
    settings = load_settings(
        egress="enforce",
        egress_allow="PyPI.org, *.npmjs.org:443",
        egress_deny_cidrs="10.96.0.0/12 fd00::/8",
        egress_proxy_host="10.0.0.5",
    )
    lists = settings.egress_lists
    assert lists.allow_text == ["pypi.org", "*.npmjs.org:443"]
    assert [str(n) for n in lists.deny_cidrs] == ["10.96.0.0/12", "fd00::/8"]
    assert settings.egress_proxy_address == "http://10.0.0.5:3128"
