"""A throwaway certificate authority for TLS tests, made with the `cryptography` package.

`make_tls_files(directory)` writes PEM files: `ca.pem` (the CA), `server.pem`/`server.key`
(for localhost and 127.0.0.1, signed by the CA), `client.pem`/`client.key` (signed by the
CA) and `stranger.pem`/`stranger.key` (a client certificate signed by another CA), plus
`ssl.config` and `mtls.config`: TF Serving SSLConfig text protos for server-only and mutual TLS.
"""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, stem: str, certificate, key) -> None:
    (directory / f"{stem}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _ssl_config(directory: Path, client_verify: bool) -> str:
    fields = {"server_key": "server.key", "server_cert": "server.pem"}
    if client_verify:
        fields["custom_ca"] = "ca.pem"
    lines = [
        f'{field}: "{(directory / name).read_text().encode("unicode_escape").decode()}"'
        for field, name in fields.items()
    ]
    if client_verify:
        lines.append("client_verify: true")
    return "\n".join(lines) + "\n"


def make_tls_files(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("wetterfrosch test CA", ca_key, _name("wetterfrosch test CA"), ca_key, ca=True)
    _write(directory, "ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    _write(directory, "server", _certificate("localhost", server_key, ca.subject, ca_key, server=True), server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    _write(directory, "client", _certificate("client", client_key, ca.subject, ca_key), client_key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _certificate("another CA", other_key, _name("another CA"), other_key, ca=True)
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    _write(directory, "stranger", _certificate("stranger", stranger_key, other_ca.subject, other_key), stranger_key)
    (directory / "ssl.config").write_text(_ssl_config(directory, client_verify=False))
    (directory / "mtls.config").write_text(_ssl_config(directory, client_verify=True))
    return directory
