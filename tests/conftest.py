"""Shared pytest fixtures: repo on sys.path, the real-trace folder (tests skip without it), and
the one wait-for-a-condition helper that tests use instead of fixed sleeps or wall-clock asserts."""

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRACES = REPO.parent / "shared" / "traces"
TWITTER = TRACES / "twitter-2021-08.per-second.txt.gz"


@pytest.fixture(autouse=True)
def _restore_hybridserve_logger():
    """A CLI run in-process calls logs.configure (propagate off): undo it so caplog sees records."""
    log = logging.getLogger("hybridserve")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved


@pytest.fixture
def twitter_trace_path() -> Path:
    """Path of the real twitter trace; skips the test where ../shared/traces is absent."""
    if not TWITTER.exists():
        pytest.skip(f"real trace not present: {TWITTER}")
    return TWITTER


@pytest.fixture
def aws(monkeypatch):
    """boto3 clients on moto's in-process mock, with dummy credentials in the environment."""
    moto = pytest.importorskip("moto")
    from hybridserve.aws import resources as R

    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    with moto.mock_aws():
        yield R.clients("us-east-1")


def wait_until(
    cond: Callable[[], object], timeout_s: float = 10.0, what: str = "the condition"
) -> None:
    """Poll `cond` until it is truthy; fail naming `what` after `timeout_s`. A generous bound
    costs nothing when the condition comes early, unlike a fixed sleep tuned to one machine."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
