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


@pytest.fixture(scope="session", autouse=True)
def _faithful_aws():
    """Moto with AWS's semantics where moto is lenient (tests/aws_faults.py, and the transport
    of tests/aws_faults_transport.py), under every test."""
    try:
        import moto  # noqa: F401
    except ImportError:
        yield None
        return
    from tests.aws_faults import faithful_aws
    from tests.aws_faults_transport import faithful_transport

    with faithful_aws() as faults, faithful_transport():
        yield faults


@pytest.fixture
def aws_faults(_faithful_aws):
    """The fault layer's state for one test: pools out of capacity are restored afterwards."""
    if _faithful_aws is None:
        pytest.skip("moto is not installed")
    yield _faithful_aws
    _faithful_aws.reset()


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


@pytest.fixture(scope="session")
def mlp_fp32_artifact(tmp_path_factory) -> Path:
    """The mlp reference model's fp32 artifact, built once (for the emulator's keep-warm tests)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")  # to build the artifact
    from predictors.artifact_build import build_artifact

    return build_artifact("mlp", tmp_path_factory.mktemp("mlp-fp32"), variant="fp32")


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, Path]:
    """mlp fp32 and int8 artifacts, built once for the tests/test_artifacts*.py files."""
    from predictors.artifact_build import build_artifact

    out = tmp_path_factory.mktemp("artifacts")
    return {v: build_artifact("mlp", out, variant=v) for v in ("fp32", "int8")}


def tagged_instances(
    ec2, deployment: str, states: tuple[str, ...] = ("pending", "running")
) -> list[dict]:
    """The instances EC2 describes as tagged for `deployment`, in one of `states`."""
    res = ec2.describe_instances(
        Filters=[
            {"Name": "tag:hybridserve:deployment", "Values": [deployment]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )["Reservations"]
    return [i for r in res for i in r["Instances"]]


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


class Scrape:
    """A `/metrics` body read with prometheus_client's own text parser, which raises on a
    malformed exposition; `value` finds one sample by name and labels."""

    def __init__(self, text: str | bytes) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        if isinstance(text, bytes):
            text = text.decode()
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The one sample named `name` whose labels include `labels` (KeyError otherwise)."""
        hits = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} samples {name}{labels} (expected exactly one)")
        return hits[0]

    def type(self, family: str) -> str:
        return self.families[family].type


# a profile claiming 20 ms per request (about 50 req/s an instance), whatever this CPU does
MLP_PROFILE = (
    "name: mlp\nprovenance: test\n"
    "reference: {vcpus: 1, threads: 1, batch_ms: {1: 20.0, 2: 38.0, 4: 76.0, 8: 160.0}}\n"
)


def mlp_with_profile(tmp: Path) -> tuple[Path, Path]:
    """The mlp fp32 artifact built in `tmp`, and `MLP_PROFILE` written beside it: what the
    local `serve` tests run and plan with."""
    from predictors.artifact_build import build_artifact

    art = build_artifact("mlp", tmp / "art", variant="fp32")
    profile = tmp / "profile.yaml"
    profile.write_text(MLP_PROFILE)
    return art, profile


@pytest.fixture
def started():
    """Servers (model servers and routers) started by a test, stopped after it."""
    from tests.model_server_helpers import ServerThread

    servers: list[ServerThread] = []

    def start(app_or_server):
        s = app_or_server
        if not isinstance(s, ServerThread):
            s = ServerThread(s).__enter__()
        servers.append(s)
        return s

    yield start
    for s in reversed(servers):
        s.__exit__(None, None, None)
