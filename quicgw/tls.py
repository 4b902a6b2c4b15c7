"""Self-signed development certificates, generated on first use.

The gateway needs a certificate for QUIC (TLS 1.3 is part of QUIC) and for the TLS/TCP listener.
When the config gives no ``certfile``/``keyfile``, :func:`dev_certificate` makes a small private
CA and a server certificate it signs (for ``localhost``, ``127.0.0.1`` and ``::1``) and caches
them. Clients verify against the CA file (``verify=cafile`` in the SDK, ``verify=`` in httpx).
A separate CA rather than one self-signed leaf, because strict verifiers (cryptography's, rustls)
refuse a CA certificate used as a server certificate and a leaf used as a trust anchor.

Cache directory: ``$QUICGW_CACHE_DIR``, else ``$XDG_CACHE_HOME/quicgw``, else ``~/.cache/quicgw``.
A set is written to a temporary directory and renamed into place in one step, so concurrent
first uses never see a key that does not match its certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEV_HOSTS = ("localhost", "127.0.0.1", "::1")
VALIDITY_DAYS = 365
RENEW_BEFORE_DAYS = 7
_SET_NAME = "dev-tls-v1"


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    certfile: str
    keyfile: str
    cafile: str | None = None  # the CA that signed certfile (None: the operator's own cert)


def cache_dir() -> Path:
    if env := os.environ.get("QUICGW_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quicgw"


def dev_certificate(directory: str | Path | None = None) -> CertificateFiles:
    """The cached development CA + server certificate, generated when missing or expiring."""
    root = Path(directory) if directory is not None else cache_dir()
    final = root / _SET_NAME
    files = CertificateFiles(
        str(final / "server.pem"), str(final / "server.key"), str(final / "ca.pem"))
    if _still_valid(files):
        return files
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tls-", dir=root))
    try:
        _generate(tmp)
        if final.exists():  # expired or incomplete: replace it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _still_valid(files):  # lost a race to a set that is not usable either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def _still_valid(files: CertificateFiles) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(Path(files.certfile).read_bytes())
        if not (Path(files.keyfile).is_file() and Path(files.cafile).is_file()):
            return False
    except (OSError, ValueError):
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left > datetime.timedelta(days=RENEW_BEFORE_DAYS)


def _generate(directory: Path) -> None:
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=VALIDITY_DAYS)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quicgw development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in DEV_HOSTS:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(cert.public_bytes(pem))
    key_path = directory / "server.key"
    key_path.write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
