"""The instance's own view of a spot interruption: EC2's metadata service, polled.

The second way a notice reaches the fleet (the first is EventBridge to the controller,
`hybridserve.aws.spot`). Two minutes before reclaiming a spot instance EC2 answers
`GET /latest/meta-data/spot/instance-action` with 200 and the action (404 until then). The
model server polls it with an IMDSv2 session token and, once it answers, reports not ready: the
router's health probe then drains the instance within a probe interval, even when the
controller's queue is late or missing, while requests already sent still finish.
"""

from __future__ import annotations

import json
import logging
import threading

from predictors.imds import Imds

PATH = "/latest/meta-data/spot/instance-action"
log = logging.getLogger("hybridserve.spot_watch")


class SpotWatch:
    """Polls the metadata service every `every_s` on a daemon thread; `noticed` (the action
    EC2 announced) is set once and stays. Any error other than 404 is logged and retried: a
    metadata hiccup never marks the instance interrupted."""

    def __init__(self, base_url: str, every_s: float = 5.0, timeout_s: float = 1.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.noticed: dict | None = None
        self.imds = Imds(base_url, timeout_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spot-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set() and self.noticed is None:
            try:
                self.noticed = self.poll()
                if self.noticed is not None:
                    log.warning("spot interruption notice: %s; reporting not ready", self.noticed)
            except (OSError, ValueError) as e:  # HTTPError is an OSError
                log.info("spot metadata poll failed (%s); retrying", e)
            self._stop.wait(self.every_s)

    def poll(self) -> dict | None:
        """The announced action, or None (404: nothing announced)."""
        body = self.imds.get(PATH)
        if body is None:
            return None
        doc = json.loads(body)
        return doc if isinstance(doc, dict) else {"action": str(doc)}
