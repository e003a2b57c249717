"""The deployment's egress CA (egress_ca.py): made once with a private key, kept across
starts, a mismatched pair refused, and a leaf it signs trusted through the bundle."""

from __future__ import annotations

import datetime
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sandbox_controller.egress_ca import CA_SUBJECT, EgressCAError, bundle, ensure_ca, load_ca


def test_first_call_makes_a_ca_with_a_private_key(tmp_path: Path) -> None:
    cert_path, key_path = ensure_ca(tmp_path / "ca")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.rfc4514_string() == f"CN={CA_SUBJECT}"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime > datetime.timedelta(days=3649)
    # No temporary file left beside the pair.
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca-key.pem", "ca.pem"]


def test_a_second_start_keeps_the_same_ca(tmp_path: Path) -> None:
    cert_path, key_path = ensure_ca(tmp_path)
    before = cert_path.read_bytes(), key_path.read_bytes()
    assert ensure_ca(tmp_path) == (cert_path, key_path)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    ensure_ca(tmp_path / "a")
    ensure_ca(tmp_path / "b")
    (tmp_path / "a" / "ca-key.pem").write_bytes((tmp_path / "b" / "ca-key.pem").read_bytes())
    with pytest.raises(EgressCAError, match="does not match"):
        ensure_ca(tmp_path / "a")


def test_half_a_pair_is_refused_not_replaced(tmp_path: Path) -> None:
    cert_path, key_path = ensure_ca(tmp_path)
    key_path.unlink()
    with pytest.raises(EgressCAError, match=r"ca-key\.pem is missing"):
        ensure_ca(tmp_path)
    assert not key_path.exists() and cert_path.exists()


def test_garbage_is_refused_with_the_paths(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    (tmp_path / "ca-key.pem").write_text("not a key")
    with pytest.raises(EgressCAError, match="is not PEM"):
        ensure_ca(tmp_path)


def _leaf(ca_dir: Path, host: str) -> tuple[bytes, bytes]:
    ca_cert, ca_key = load_ca(ca_dir / "ca.pem", ca_dir / "ca-key.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_a_client_trusting_the_bundle_accepts_a_leaf_the_ca_signed(tmp_path: Path) -> None:
    # What a sandbox's curl/pip does with SSL_CERT_FILE pointing at the bundle.
    cert_path, _ = ensure_ca(tmp_path / "ca")
    leaf, leaf_key = _leaf(tmp_path / "ca", "registry.example")
    (tmp_path / "leaf.pem").write_bytes(leaf)
    (tmp_path / "leaf-key.pem").write_bytes(leaf_key)
    system = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    (tmp_path / "bundle.pem").write_bytes(bundle(system, cert_path))

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf-key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"hello")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "bundle.pem"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client_ctx.wrap_socket(raw, server_hostname="registry.example") as tls,
    ):
        assert tls.recv(5) == b"hello"
    server.join(5)
    listener.close()
    # The system's roots are still there: a public site stays trusted beside the CA.
    assert bundle(system, cert_path).startswith(system.read_bytes().rstrip(b"\n"))
