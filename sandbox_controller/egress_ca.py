"""The deployment's egress CA: made once, kept, and checked on every start.

The egress proxy signs a leaf certificate for each secret host it intercepts (issue 19);
sandboxes trust those leaves through a bundle = their system store + this CA. Compose and
`dev` have nobody to hand them a CA, so the first start makes one in a directory and every
later start loads that same pair (sandboxes already hold its certificate).
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import NameOID

CA_SUBJECT = "agent-sandbox egress CA"
CERT_NAME = "ca.pem"
KEY_NAME = "ca-key.pem"
VALIDITY = datetime.timedelta(days=3650)


class EgressCAError(Exception):
    """The directory holds a CA this module cannot use (half a pair, or a mismatch)."""


def ensure_ca(directory: Path) -> tuple[Path, Path]:
    """The (cert, key) paths of the CA in `directory`, made there on first call."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if have_cert and have_key:
        load_ca(cert_path, key_path)
        return cert_path, key_path
    if have_cert or have_key:
        # Making a fresh key beside a kept certificate (or the reverse) would silently
        # break every sandbox that trusts the old one: refuse and say which is missing.
        missing = key_path if have_cert else cert_path
        raise EgressCAError(f"egress CA in {directory} is incomplete: {missing.name} is missing")
    cert_pem, key_pem = generate_ca()
    # Key first: a crash between the two writes leaves a key alone, which the next
    # start refuses loudly rather than pairing a certificate with no key.
    _write_atomic(key_path, key_pem, mode=0o600)
    _write_atomic(cert_path, cert_pem, mode=0o644)
    return cert_path, key_path


def generate_ca(now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """A new self-signed CA as (cert PEM, key PEM): EC P-256, CA:TRUE, pathlen 0."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_SUBJECT)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        # An hour back so a sandbox whose clock lags a little still accepts it.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, PrivateKeyTypes]:
    """The CA's certificate and private key, refused unless they belong together."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as exc:
        raise EgressCAError(f"egress CA {cert_path} / {key_path} is not PEM: {exc}") from exc
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise EgressCAError(
            f"egress CA key {key_path} does not match certificate {cert_path}; "
            "remove both to make a new CA, or restore the matching pair"
        )
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not constraints.ca:
        raise EgressCAError(f"egress CA certificate {cert_path} is not a CA (CA:FALSE)")
    return cert, key


def bundle(system_bundle: Path, ca_cert: Path) -> bytes:
    """The sandbox's trust store: the system's roots, then the deployment CA."""
    system = system_bundle.read_bytes()
    if system and not system.endswith(b"\n"):
        system += b"\n"
    return system + ca_cert.read_bytes()


def sandbox_bundle(ca_cert: Path) -> bytes:
    """The bundle sandboxes trust: this machine's system roots and the CA (the CA alone
    where there is no system store to read)."""
    paths = ssl.get_default_verify_paths()
    system = Path(paths.cafile or paths.openssl_cafile)
    return bundle(system, ca_cert) if system.is_file() else ca_cert.read_bytes()


def _public_der(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    # The mode is set on the temporary file before any byte lands, so the key is never
    # readable by others, not even for an instant; rename makes it appear whole.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
