"""EC2's instance metadata service as the tests meet it: IMDSv2 only (a PUT for a session
token, then GETs that carry it, 401 without), each path answering what the test put in
`paths` (404 for any other, or while its value is None)."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator

TOKEN = "tok-1"


class ImdsServer(http.server.ThreadingHTTPServer):
    paths: dict[str, str | None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ImdsServer

    def do_PUT(self):  # noqa: N802
        ok = self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        )
        self._reply(200 if ok else 400, TOKEN.encode())

    def do_GET(self):  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            return self._reply(401, b"")
        body = self.server.paths.get(self.path)
        if body is None:
            return self._reply(404, b"")
        self._reply(200, body.encode())

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@contextlib.contextmanager
def imds_server(paths: dict[str, str | None]) -> Iterator[ImdsServer]:
    """The double on 127.0.0.1, serving `paths` (the dict may change while it runs)."""
    srv = ImdsServer(("127.0.0.1", 0), _Handler)
    srv.paths = paths
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
