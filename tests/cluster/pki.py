"""Certificates and kubeconfigs for the test cluster: one CA, serving and client certificates."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAYS = 30


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key, cert: x509.Certificate | None = None) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    if cert is not None:
        path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class Pki:
    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str, ext: str) -> Path:
        return self.root / f"{name}.{ext}"

    def create(self, server_ips: list[str], node: str) -> None:
        """Every key and certificate the control plane and the node need; idempotent."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.path("ca", "crt").is_file():
            return
        now = datetime.datetime.now(datetime.UTC)
        ca_key = _key()
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("codex-test-ca"))
            .issuer_name(_name("codex-test-ca"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        _write(self.root / "ca", ca_key, ca)

        def leaf(name: str, cn: str, orgs=(), server=False, sans: list[str] = ()) -> None:
            key = _key()
            usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
            builder = (
                x509.CertificateBuilder()
                .subject_name(_name(cn, tuple(orgs)))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=_DAYS))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            )
            if sans:
                alt = [x509.IPAddress(ipaddress.ip_address(s)) if s[0].isdigit() else x509.DNSName(s) for s in sans]
                builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
            _write(self.root / name, key, builder.sign(ca_key, hashes.SHA256()))

        leaf(
            "apiserver",
            "kube-apiserver",
            server=True,
            sans=[
                *server_ips,
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        leaf("kubelet-server", node, server=True, sans=[node, *server_ips])
        leaf("admin", "codex-admin", orgs=["system:masters"])
        leaf("apiserver-kubelet-client", "kube-apiserver-kubelet-client", orgs=["system:masters"])
        leaf("controller-manager", "system:kube-controller-manager")
        leaf("scheduler", "system:kube-scheduler")
        leaf("kubelet", f"system:node:{node}", orgs=["system:nodes"])
        leaf("kube-proxy", "system:kube-proxy")
        _write(self.root / "service-account", _key())
        sa = serialization.load_pem_private_key(self.path("service-account", "key").read_bytes(), None)
        self.path("service-account", "pub").write_bytes(
            sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def kubeconfig(self, name: str, server: str, out: Path) -> Path:
        """A kubeconfig that authenticates with the client certificate `name`."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "codex", "cluster": {"server": server, "certificate-authority": str(self.path("ca", "crt"))}}
            ],
            "users": [
                {
                    "name": name,
                    "user": {
                        "client-certificate": str(self.path(name, "crt")),
                        "client-key": str(self.path(name, "key")),
                    },
                }
            ],
            "contexts": [{"name": "codex", "context": {"cluster": "codex", "user": name}}],
            "current-context": "codex",
        }
        out.write_text(yaml.safe_dump(config))
        return out
