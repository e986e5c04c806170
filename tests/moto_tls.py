"""A moto server on 127.0.0.1 over https, as AWS's endpoints are: TLS-only bucket policies
(tests/aws_faults_transport.py) let its requests through, as they do on AWS.

The certificate is signed by a throwaway CA made for the server; `AWS_CA_BUNDLE` names that CA
while the server runs, so boto3 in this process and the CLI in subprocesses (given
`os.environ`) verify the server like any AWS endpoint, with no verify=False anywhere.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"


def _cert_pair(out: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key): a CA, and a server certificate for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    Key = ec.EllipticCurvePrivateKey

    def cert(subject: str, key: Key, issuer: str, signer: Key, *, ca: bool) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
            )
        )
        if ca:
            usage = dict(digital_signature=False, key_cert_sign=True, crl_sign=True)
        else:
            usage = dict(digital_signature=True, key_cert_sign=False, crl_sign=False)
            san = [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        b = b.add_extension(
            x509.KeyUsage(
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
                **usage,
            ),
            critical=True,
        )
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("hybridserve test CA", ca_key, "hybridserve test CA", ca_key, ca=True)
    leaf = cert(HOST, key, "hybridserve test CA", ca_key, ca=False)
    paths = out / "ca.pem", out / "server.pem", out / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@contextlib.contextmanager
def moto_server(*, tls: bool = True) -> Iterator[str]:
    """A ThreadedMotoServer on a free port, its account reset; yields its URL (https unless
    `tls` is False). Moto keeps one state per process, shared by every server in it."""
    from moto.moto_server import werkzeug_app as app
    from moto.server import ThreadedMotoServer

    with contextlib.ExitStack() as stack:
        context = client = None
        if tls:
            d = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moto-tls-")))
            ca, crt, key = _cert_pair(d)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(crt, key)
            client = ssl.create_default_context(cafile=str(ca))
            saved = os.environ.get("AWS_CA_BUNDLE")
            os.environ["AWS_CA_BUNDLE"] = str(ca)
            stack.callback(_restore_env, "AWS_CA_BUNDLE", saved)

        failed: list[BaseException] = []

        class Server(ThreadedMotoServer):
            def _server_entry(self) -> None:  # ThreadedMotoServer's, with the TLS context
                from werkzeug.serving import make_server

                # moto's own request handler where this moto has one (it keeps the raw path)
                handler = getattr(app, "MotoRequestHandler", None)
                try:
                    self._server = make_server(
                        self._ip_address,
                        self._port,
                        app.DomainDispatcherApplication(app.create_backend_app),
                        True,
                        **({"request_handler": handler} if handler else {}),
                        ssl_context=context,
                    )
                except BaseException as e:  # start() waits on the event: never leave it unset
                    failed.append(e)
                    self._server_ready_event.set()
                    raise
                self._server_ready_event.set()
                self._server.serve_forever()

        server = Server(ip_address=HOST, port=0, verbose=False)
        server.start()
        if failed:
            raise RuntimeError("the moto server did not start") from failed[0]
        stack.callback(server.stop)
        host, port = server.get_host_and_port()
        url = f"{'https' if tls else 'http'}://{host}:{port}"
        # start from an empty account, whatever the tests before this one left behind
        reset = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, context=client).close()
        yield url


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
