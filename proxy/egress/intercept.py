"""TLS interception for secret hosts only: a leaf certificate per host, signed by the
deployment CA, presented to the sandbox; upstream verified against the system store.

Leaves share one key (made at start) and are cached per host, so a new connection to a
known host costs a handshake and no signing.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sandbox_controller.config import Settings
from sandbox_controller.egress_ca import ensure_ca, load_ca

LEAF_DAYS = 7  # short: a leaf is re-minted at each restart anyway
CACHE_MAX = 1024


def ca_paths(settings: Settings) -> tuple[Path, Path]:
    """The CA given (SANDBOX_EGRESS_CA_CERT_FILE/_KEY_FILE), else the one made on first
    start in SANDBOX_STATE_DIR/egress-ca (kept, so sandboxes' bundles stay good)."""
    if settings.egress_ca_cert_file and settings.egress_ca_key_file:
        return Path(settings.egress_ca_cert_file), Path(settings.egress_ca_key_file)
    return ensure_ca(Path(settings.state_dir) / "egress-ca")


class Interceptor:
    def __init__(self, ca_cert: Path, ca_key: Path) -> None:
        self._ca_cert, self._ca_key = load_ca(ca_cert, ca_key)
        self._ca_pem = self._ca_cert.public_bytes(serialization.Encoding.PEM)
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        # Python's default context: the system store, or SSL_CERT_FILE where set.
        self.upstream = ssl.create_default_context()
        self.upstream.set_alpn_protocols(["http/1.1"])

    def server_context(self, host: str) -> ssl.SSLContext:
        ctx = self._contexts.get(host)
        if ctx is not None:
            self._contexts.move_to_end(host)
            return ctx
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])  # the swap reads HTTP/1.1 only
        # load_cert_chain reads files only: a private temporary one, removed at once.
        fd, path = tempfile.mkstemp(prefix="egress-leaf-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._mint(host) + self._ca_pem + self._leaf_key_pem)
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
        self._contexts[host] = ctx
        if len(self._contexts) > CACHE_MAX:
            self._contexts.popitem(last=False)
        return ctx

    def _mint(self, host: str) -> bytes:
        now = datetime.datetime.now(datetime.UTC)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._ca_cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return cert.public_bytes(serialization.Encoding.PEM)
