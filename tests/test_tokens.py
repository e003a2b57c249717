"""Session tokens name their key (tokens.py): the current secret signs, previous ones
still verify, and a token of a key the verifier has not learnt says so."""

from __future__ import annotations

import pytest

from sandbox_controller.tokens import (
    TokenError,
    UnknownKey,
    _b64,
    issue_token,
    load_public_key,
    public_key,
    secret_key_id,
    signing_key,
    token_key_id,
    verify_token,
)

OLD, NEW = b"the-secret-before-the-rotation", b"the-secret-after-the-rotation"
NOW = 2_000_000_000.0


def keys(*secrets: bytes) -> list:  # type: ignore[type-arg]
    return [load_public_key(public_key(s)) for s in secrets]


def test_a_token_names_the_key_that_signed_it() -> None:
    token = issue_token(NEW, "sess-1", NOW + 60)
    assert token_key_id(token) == secret_key_id(NEW) != secret_key_id(OLD)
    assert len(token.split(".")) == 4


def test_tokens_of_the_previous_secret_verify_beside_the_current_ones() -> None:
    both = keys(NEW, OLD)
    before = issue_token(OLD, "sess-1", NOW + 60)
    after = issue_token(NEW, "sess-1", NOW + 60)
    assert verify_token(both, before, NOW).session_id == "sess-1"
    assert verify_token(both, after, NOW).session_id == "sess-1"
    # Once the previous secret is dropped, its tokens no longer open anything.
    with pytest.raises(UnknownKey) as caught:
        verify_token(keys(NEW), before, NOW)
    assert caught.value.kid == secret_key_id(OLD)


def test_a_token_from_before_key_ids_still_verifies() -> None:
    payload = f"{_b64(b'sess-1')}.{int(NOW + 60)}"
    legacy = f"{payload}.{_b64(signing_key(OLD).sign(payload.encode()))}"
    assert token_key_id(legacy) is None
    assert verify_token(keys(NEW, OLD), legacy, NOW).session_id == "sess-1"
    with pytest.raises(TokenError, match="signature"):
        verify_token(keys(NEW), legacy, NOW)


def test_a_key_id_cannot_be_moved_onto_another_token() -> None:
    # The key id is signed with the rest: naming the other key breaks the signature.
    token = issue_token(OLD, "sess-1", NOW + 60)
    renamed = secret_key_id(NEW) + "." + token.partition(".")[2]
    with pytest.raises(TokenError, match="signature"):
        verify_token(keys(NEW, OLD), renamed, NOW)
