"""EC2's instance metadata service, IMDSv2 only: a session token from a PUT, then GETs that
carry it (a 401 renews it). Link-local, so never through a proxy. The spot watch polls it; the
model server reads its instance's tags from it at start (the models its shard should hold).
"""

from __future__ import annotations

import urllib.error
import urllib.request

TOKEN_PATH = "/latest/api/token"
TOKEN_TTL_S = 21600  # IMDSv2's longest: one token for a process's life, renewed on 401
TAGS_PATH = "/latest/meta-data/tags/instance"


class Imds:
    def __init__(self, base_url: str, timeout_s: float = 1.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._token: str | None = None
        self._open = urllib.request.build_opener(urllib.request.ProxyHandler({})).open

    def get(self, path: str) -> str | None:
        """The body at `path`, or None for 404. Other errors raise (OSError); a 401 drops the
        token so that the next call takes a new one."""
        if self._token is None:
            req = urllib.request.Request(
                self.base_url + TOKEN_PATH,
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
            )
            with self._open(req, timeout=self.timeout_s) as r:
                self._token = r.read().decode()
        req = urllib.request.Request(
            self.base_url + path, headers={"X-aws-ec2-metadata-token": self._token}
        )
        try:
            with self._open(req, timeout=self.timeout_s) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            if e.code == 401:
                self._token = None
            raise

    def instance_tags(self, prefix: str = "") -> dict[str, str] | None:
        """The instance's tags whose key starts with `prefix`; None when the metadata service
        does not offer tags (the launch template did not enable them)."""
        keys = self.get(TAGS_PATH)
        if keys is None:
            return None
        out = {}
        for key in keys.split():
            if key.startswith(prefix):
                value = self.get(f"{TAGS_PATH}/{key}")
                if value is not None:
                    out[key] = value
        return out
