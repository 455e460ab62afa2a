"""Mutual TLS for the embedded SeaweedFS's gRPC ports.

SeaweedFS's components (master, volume, filer, the S3 gateway) talk over gRPC, and a gRPC port
accepts any caller unless `security.toml` names a CA and certificates: then every gRPC connection is
mutual TLS and a caller without a certificate from that CA is refused (before this, any local process
could call e.g. `master_pb.Seaweed/CollectionDelete` and wipe the bucket).

The stack makes a private CA on first start, issues one certificate (common name `COMMON_NAME`,
usable as server and client) for its weed process, and keeps only what weed needs, 0600 in the
state dir: the CA certificate, the weed certificate and its key. The CA key is not kept (nothing
else is issued; a new CA is made when the certificate nears its end). Production SeaweedFS clusters
put certificates from their own CA in the same `security.toml` keys (docs/security.md).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

COMMON_NAME = "campaignops-weed"
VALID_DAYS = 825
RENEW_WITHIN_DAYS = 30
COMPONENTS = ("master", "volume", "filer", "s3")    # the [grpc.<component>] sections weed server reads


def files(tls_dir: Path) -> dict[str, Path]:
    return {"ca": tls_dir / "ca.crt", "cert": tls_dir / "weed.crt", "key": tls_dir / "weed.key"}


def ensure(tls_dir: Path, write_private) -> dict[str, Path]:
    """The CA certificate, weed certificate and key in `tls_dir` (made, or re-made when missing or
    within RENEW_WITHIN_DAYS of expiry); `write_private(path, text)` writes a file 0600."""
    paths = files(tls_dir)
    if _still_valid(paths):
        return paths
    ca_pem, cert_pem, key_pem = _issue()
    write_private(paths["ca"], ca_pem)
    write_private(paths["key"], key_pem)
    write_private(paths["cert"], cert_pem)
    return paths


def security_toml(paths: dict[str, Path]) -> str:
    """The `[grpc*]` sections of weed's security.toml: mTLS on every component, clients included."""
    lines = ["[grpc]", f'ca = "{paths["ca"]}"', ""]
    for component in (*COMPONENTS, "client"):
        lines += [f"[grpc.{component}]", f'cert = "{paths["cert"]}"', f'key = "{paths["key"]}"']
        if component != "client":
            lines.append(f'allowed_commonNames = "{COMMON_NAME}"')
        lines.append("")
    return "\n".join(lines)


def _still_valid(paths: dict[str, Path]) -> bool:
    from cryptography import x509

    if not all(p.is_file() for p in paths.values()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    except ValueError:
        return False
    left = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    return left > dt.timedelta(days=RENEW_WITHIN_DAYS)


def _issue() -> tuple[str, str, str]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "campaignops stack CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.DNSName(COMMON_NAME),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), key_pem.decode()
