"""Credentials as lists (credentials.py): several API tokens with ids, and the hooks'
keys apart from the token secret's, current first."""

from __future__ import annotations

import hashlib

import pytest

from sandbox_controller.config import ConfigError, check_secrets, load_settings
from sandbox_controller.credentials import (
    ApiToken,
    api_tokens,
    caller_of,
    fingerprint,
    hook_keys,
    parse_api_tokens,
)
from sandbox_controller.sandbox_contract import hook_key

OLD = "old-api-token-0123456789abcdef"
NEW = "new-api-token-0123456789abcdef"


def test_tokens_with_and_without_an_id_are_all_accepted_and_named() -> None:
    tokens = api_tokens(OLD, f"backend-2026:{NEW}, {NEW}x")
    assert [t.id for t in tokens] == [
        fingerprint(OLD),
        "backend-2026",
        hashlib.sha256(f"{NEW}x".encode()).hexdigest()[:12],
    ]
    assert caller_of(tokens, NEW) == ApiToken("backend-2026", NEW)
    assert caller_of(tokens, OLD) is not None and caller_of(tokens, OLD).id == fingerprint(OLD)  # type: ignore[union-attr]
    assert caller_of(tokens, "not-one-of-them") is None
    # The same token in both settings is one caller, by its id.
    assert [t.id for t in api_tokens(NEW, f"ci:{NEW}")] == ["ci"]


def test_a_token_is_never_shown_by_its_repr() -> None:
    assert NEW not in repr(parse_api_tokens(f"ci:{NEW}"))


@pytest.mark.parametrize(
    ("value", "words"),
    [("a:x,a:y", "given twice"), ("ci:", "is empty"), ("ci: ", "is empty")],
)
def test_bad_token_lists_are_refused_by_name(value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=f"SANDBOX_API_TOKENS: .*{words}"):
        load_settings(api_tokens=value)


def test_every_listed_secret_is_held_to_the_weak_secret_test() -> None:
    for name, value in [
        ("api_tokens", f"ci:{NEW},ops:changeme"),
        ("token_secret_previous", f"{NEW},short"),
        ("hook_secret_previous", "changeme-please"),
    ]:
        with pytest.raises(ConfigError, match=f"SANDBOX_{name.upper()}: entry"):
            check_secrets(load_settings(**{name: value}))
    check_secrets(load_settings(api_tokens=f"ci:{NEW},{OLD}", token_secret_previous=OLD))


def test_the_proxy_credential_may_be_none_of_the_api_tokens() -> None:
    with pytest.raises(ConfigError, match="SANDBOX_PROXY_TOKEN"):
        check_secrets(load_settings(api_tokens=f"ci:{NEW}", proxy_token=NEW))


def test_without_a_hook_secret_the_token_secrets_key_the_hooks_current_first() -> None:
    # As before SANDBOX_HOOK_SECRET: the pods of the previous token secret still answer.
    keys = hook_keys(None, (), b"token-new", (b"token-old",))
    assert keys == (hook_key(b"token-new"), hook_key(b"token-old"))


def test_with_a_hook_secret_a_token_rotation_leaves_the_hook_keys_alone() -> None:
    before = hook_keys(b"hooks-1", (), b"token-old", ())
    after = hook_keys(b"hooks-1", (), b"token-new", (b"token-old",))
    assert before == after == (hook_key(b"hooks-1"),)
    # A hook rotation: the new key first, the old one still asked.
    assert hook_keys(b"hooks-2", (b"hooks-1",), b"token-new", ()) == (
        hook_key(b"hooks-2"),
        hook_key(b"hooks-1"),
    )


def test_settings_give_the_controller_every_key_it_holds() -> None:
    settings = load_settings(
        token_secret="token-new", token_secret_previous="token-old, token-older"
    )
    assert settings.verifying_token_secrets == (b"token-old", b"token-older")
    assert settings.hook_keys(b"token-new")[0] == hook_key(b"token-new")
