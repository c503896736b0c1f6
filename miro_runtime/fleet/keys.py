"""Keys and certificates for a fleet, with the ``cryptography`` library Flower already depends on: a board's node
key pair (ECDSA P-384 in OpenSSH format, what Flower's node authentication reads) and, for a fleet without a PKI
of its own, a private CA with a SuperLink certificate signed by it. A real deployment may use its own CA instead;
README says how."""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _write(path: str, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def node_keys(private_path: str) -> str:
    """A board's key pair: ``private_path`` (mode 0600; fleet.auth_key) and ``private_path``.pub (what the
    server registers) -> the public key's path."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()), private=True)
    pub = private_path + ".pub"
    _write(pub, key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return pub


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def server_certs(out_dir: str, hosts: list, days: int = 825) -> dict:
    """A private CA (ca.pem, ca.key) and a SuperLink certificate for ``hosts`` (names or IP addresses) signed by
    it (server.pem, server.key) in ``out_dir`` -> their paths. Boards get ca.pem (fleet.root_certificates)."""
    os.makedirs(out_dir, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("miro fleet CA")).issuer_name(_name("miro fleet CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    alt = []
    for h in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = {n: os.path.join(out_dir, n) for n in ("ca.pem", "ca.key", "server.pem", "server.key")}
    _write(paths["ca.pem"], ca.public_bytes(pem))
    _write(paths["ca.key"], ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), private=True)
    _write(paths["server.pem"], cert.public_bytes(pem))
    _write(paths["server.key"], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()), private=True)
    return paths
