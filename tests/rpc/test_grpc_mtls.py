"""gRPC with mutual TLS, as in production: a client needs a certificate signed by the fleet's CA."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bev.echo.v1 import echo_pb2
from bev.echo.v1.echo_rpc import EchoClient
from bev.rpc import InstanceInfo, RpcError, StatusCode
from bev.rpc.grpc_transport import GrpcRpcServer, TlsFiles
from tests.rpc.echo import Echo

async_test = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Pem:
    cert: bytes
    key: bytes


def _issue(name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, ca: bool = False) -> tuple[Pem, x509.Name, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    pem = Pem(cert.public_bytes(serialization.Encoding.PEM),
              key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    return pem, subject, key


@dataclass
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    stranger: Pem  # signed by another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, ca_name, ca_key = _issue("bev-fleet-ca", None, ca=True)
    server, _, _ = _issue("bev-echo", (ca_name, ca_key))
    client, _, _ = _issue("bev-gateway", (ca_name, ca_key))
    _, other_name, other_key = _issue("someone-else-ca", None, ca=True)
    stranger, _, _ = _issue("intruder", (other_name, other_key))
    return Pki(ca, server, client, stranger)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mtls_address(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    folder = Path(tmp_path_factory.mktemp("tls"))
    for name, data in {"server.crt": pki.server.cert, "server.key": pki.server.key, "ca.crt": pki.ca.cert}.items():
        (folder / name).write_bytes(data)
    server = GrpcRpcServer(Echo(InstanceInfo(service="echo")), host="127.0.0.1", port=0, max_request_bytes=1 << 20,
                           default_timeout_s=10,
                           tls=TlsFiles(folder / "server.crt", folder / "server.key", folder / "ca.crt"))
    port = await server.start()
    yield f"localhost:{port}"
    await server.stop(1)


def _credentials(pki: Pki, who: Pem | None) -> grpc.ChannelCredentials:
    if who is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)
    return grpc.ssl_channel_credentials(root_certificates=pki.ca.cert, private_key=who.key, certificate_chain=who.cert)


@async_test
async def test_a_client_with_a_fleet_certificate_is_served(pki: Pki, mtls_address: str) -> None:
    client = EchoClient.over_grpc(mtls_address, timeout_s=5, credentials=_credentials(pki, pki.client))
    try:
        assert (await client.Echo(echo_pb2.EchoRequest(payload=b"over mTLS"))).payload == b"over mTLS"
    finally:
        await client.close()


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
@async_test
async def test_a_client_without_a_fleet_certificate_is_refused(pki: Pki, mtls_address: str, who: str) -> None:
    credentials = _credentials(pki, None if who == "no certificate" else pki.stranger)
    client = EchoClient.over_grpc(mtls_address, timeout_s=5, credentials=credentials)
    try:
        with pytest.raises(RpcError) as refused:
            await client.Echo(echo_pb2.EchoRequest(payload=b"let me in"))
        assert refused.value.code == StatusCode.UNAVAILABLE
    finally:
        await client.close()


@async_test
async def test_plaintext_is_refused(mtls_address: str) -> None:
    client = EchoClient.over_grpc(mtls_address, timeout_s=5)
    try:
        with pytest.raises(RpcError) as refused:
            await client.Echo(echo_pb2.EchoRequest())
        assert refused.value.code == StatusCode.UNAVAILABLE
    finally:
        await client.close()
