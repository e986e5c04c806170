"""The router over TLS (router.tls_cert / tls_key, or --tls-cert / --tls-key): https with the
given certificate, verified by a client that trusts its CA; a half-given pair is refused."""

from __future__ import annotations

import http.client
import ssl

import pytest

from hybridserve.fleet import Endpoint
from tests.test_router import Fleet, _router, artifact, model, server  # noqa: F401

pytest.importorskip("uvicorn")
pytest.importorskip("cryptography")


def test_the_router_serves_https_with_its_certificate(model, server, tmp_path):  # noqa: F811
    from hybridserve.router_stack import RouterStack
    from hybridserve.serve_config import RouterOptions
    from tests.moto_tls import _cert_pair

    ca, crt, key = _cert_pair(tmp_path)
    fleet = Fleet([Endpoint("i-1", "c5.large/on_demand", f"http://{server.url}")])

    class Stack(RouterStack):
        def prepare(self) -> None:
            self.router = _router(model, fleet)

    stack = Stack(RouterOptions(port=0, tls_cert=crt, tls_key=key))
    stack.prepare()
    url = stack.start_background()
    try:
        assert url.startswith("https://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        ctx = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        conn.request("GET", "/v2/health/live")
        assert conn.getresponse().status == 200
        conn.close()
        # a client that does not trust the CA is refused the handshake
        strict = http.client.HTTPSConnection(
            "127.0.0.1", port, context=ssl.create_default_context(), timeout=10
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            strict.request("GET", "/v2/health/live")
    finally:
        stack.stop_background()


def test_a_half_given_tls_pair_or_a_missing_file_names_the_field(tmp_path):
    from pydantic import ValidationError

    from hybridserve.serve_config import RouterOptions

    pem = tmp_path / "cert.pem"
    pem.write_text("x")
    with pytest.raises(ValidationError, match="give both or neither"):
        RouterOptions(tls_cert=pem)
    with pytest.raises(ValidationError, match="tls_key") as e:
        RouterOptions(tls_cert=pem, tls_key=tmp_path / "absent.key")
    assert "is not a file" in str(e.value)
