"""What is kept of a sandbox's answer: short, printable, and without the claim's secrets,
whole, JSON-escaped, or cut off where the read stopped."""

from __future__ import annotations

from sandbox_controller.quoting import ANSWER_READ_MAX, QUOTE_MAX, REDACTED, quote


def test_a_secret_is_blanked_as_sent_and_as_json_would_echo_it() -> None:
    secret = 'pa"ss\nwörd'
    raw = f'sent {secret} echoed "pa\\"ss\\nw\\u00f6rd" raw "pa\\"ss\\nwörd"'.encode()
    assert quote(raw, [secret]) == f'sent {REDACTED} echoed "{REDACTED}" raw "{REDACTED}"'


def test_a_secret_cut_by_the_read_limit_is_blanked_from_its_start() -> None:
    secret = "s3cr3t-" + "x" * 9000
    raw = (b"why: " + secret.encode())[: ANSWER_READ_MAX + 100]
    assert quote(raw, [secret]) == f"why: {REDACTED}"


def test_control_characters_go_and_the_quote_is_short() -> None:
    text = quote(b"\x1b[2Jline\r\nnext\x00\xc2\x85 " + b"y" * 10_000)
    assert text.startswith("[2Jline next y") and len(text) == QUOTE_MAX and text.endswith("…")
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in text)


def test_invalid_utf8_and_empty_secrets_are_harmless() -> None:
    assert quote(b"\xff\xfeok", [""]) == "\ufffd\ufffdok"
