"""Shared pytest fixtures: repo on sys.path, the real-trace folder (tests skip without it)."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRACES = REPO.parent / "shared" / "traces"
TWITTER = TRACES / "twitter-2021-08.per-second.txt.gz"


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
