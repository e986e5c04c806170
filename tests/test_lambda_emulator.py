"""The local Lambda emulator through a real boto3 client: results, cold/warm, scaling, errors."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # to build the test artifact
boto3 = pytest.importorskip("boto3")
pytest.importorskip("aiohttp")

from botocore.config import Config  # noqa: E402

from hybridserve.lambda_emulator.server import LambdaEmulator  # noqa: E402
from predictors.artifact import build_artifact, load_artifact  # noqa: E402
from predictors.onnx_model import OnnxModel  # noqa: E402
from tests.conftest import REPO, Scrape, wait_until  # noqa: E402

FN = "hybridserve-spill"
REPORT = re.compile(
    r"^REPORT RequestId: (?P<rid>[0-9a-f-]{36})\tDuration: (?P<dur>\d+\.\d\d) ms\t"
    r"Billed Duration: (?P<billed>\d+) ms\tMemory Size: (?P<mem>\d+) MB\t"
    r"Max Memory Used: (?P<used>\d+) MB\t(?:Init Duration: (?P<init>\d+\.\d\d) ms\t)?$"
)
SLEEP = "tests.lambda_test_handlers:sleep"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return build_artifact("mlp", tmp_path_factory.mktemp("art"), variant="fp32")


def client(url: str):
    return boto3.client(
        "lambda",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=60),
    )


def request(x: np.ndarray, rid: str = "r") -> dict:
    return {
        "id": rid,
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ],
    }


def output(resp: dict) -> np.ndarray:
    y = resp["outputs"][0]
    return np.array(y["data"], dtype=np.float32).reshape(y["shape"])


def expected(artifact, x: np.ndarray) -> np.ndarray:
    return OnnxModel(load_artifact(artifact))._session.run(None, {"x": x})[0]


def invoke(c, event: dict, **kw) -> tuple[dict, dict | None, str | None]:
    """(response, REPORT fields, function error) of one RequestResponse invoke with log tail."""
    r = c.invoke(FunctionName=FN, Payload=json.dumps(event).encode(), LogType="Tail", **kw)
    assert r["StatusCode"] == 200 and r["ExecutedVersion"] == "$LATEST"
    tail = base64.b64decode(r["LogResult"]).decode()
    m = REPORT.match(tail.splitlines()[-1])
    assert m, f"last log line is not a REPORT line: {tail!r}"
    assert m["rid"] == r["ResponseMetadata"]["RequestId"]
    return json.loads(r["Payload"].read()), m.groupdict(), r.get("FunctionError")


def billed_ms(rep: dict, ms: float) -> None:
    """Billed Duration is the duration rounded up to the ms (the REPORT rounds to 0.01 ms)."""
    assert max(1, math.ceil(ms - 0.01)) <= int(rep["billed"]) <= max(1, math.ceil(ms + 0.01))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_v2_invoke_cold_then_warm_with_aws_report_and_bill(artifact):
    rng = np.random.default_rng(0)
    with LambdaEmulator(artifact, memory_mb=1024) as emu:
        c = client(emu.url)
        x = rng.standard_normal((3, 16)).astype(np.float32)
        out, rep, err = invoke(c, request(x, "a"))
        assert err is None and out["id"] == "a" and out["model_name"] == "mlp"
        np.testing.assert_allclose(output(out), expected(artifact, x), rtol=1e-5, atol=1e-6)
        assert rep["init"] is not None and float(rep["init"]) > 0  # cold: spawn + load
        assert rep["mem"] == "1024" and int(rep["used"]) > 0
        billed_ms(rep, float(rep["dur"]) + float(rep["init"]))  # AWS bills init now
        x2 = rng.standard_normal((1, 16)).astype(np.float32)
        out2, rep2, _ = invoke(c, request(x2, "b"))
        np.testing.assert_allclose(output(out2), expected(artifact, x2), rtol=1e-5, atol=1e-6)
        assert rep2["init"] is None  # warm
        billed_ms(rep2, float(rep2["dur"]))
        assert float(rep["init"]) > float(rep2["dur"])
        s = emu.stats()
        assert s["invocations"] == 2 and s["cold_starts"] == 1 and s["environments"] == 1
        assert s["busy"] == 0 and s["errors"] == 0 and s["throttles"] == 0
        billed = int(rep["billed"]) + int(rep2["billed"])
        assert s["billed_ms_total"] == billed
        assert s["gb_s_total"] == pytest.approx(1024 / 1024 * billed / 1000)
        with urllib.request.urlopen(emu.url + "/emulator/stats") as r:
            assert json.load(r) == s
        # the same counters through /metrics, read by prometheus_client's parser
        with urllib.request.urlopen(emu.url + "/metrics") as r:
            m = Scrape(r.read())
        fn = {"function": FN}
        assert m.value("hybridserve_emulator_invocations_total", **fn) == 2
        assert m.value("hybridserve_emulator_cold_starts_total", **fn) == 1
        assert m.value("hybridserve_emulator_billed_seconds_total", **fn) == billed / 1000
        assert m.value("hybridserve_emulator_gb_seconds_total", **fn) == pytest.approx(
            s["gb_s_total"]
        )
        assert m.value("hybridserve_emulator_duration_seconds_count", **fn) == 2
        assert m.value("hybridserve_emulator_init_duration_seconds_sum", **fn) == pytest.approx(
            float(rep["init"]) / 1000, abs=1e-4
        )
        assert m.value("hybridserve_emulator_environments", **fn) == 1
        assert m.value("hybridserve_emulator_concurrent_executions", **fn) == 0


def test_batch_event_returns_responses_in_order(artifact):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 3, 2)]
    with LambdaEmulator(artifact) as emu:
        out, _, err = invoke(
            client(emu.url), {"batch": [request(x, str(i)) for i, x in enumerate(xs)]}
        )
    assert err is None and [r["id"] for r in out["responses"]] == ["0", "1", "2"]
    for r, x in zip(out["responses"], xs, strict=True):
        np.testing.assert_allclose(output(r), expected(artifact, x), rtol=1e-5, atol=1e-6)


def test_request_errors_are_the_modelled_exceptions(tmp_path):
    with pytest.raises(ValueError, match="artifact not found"):
        LambdaEmulator(tmp_path / "missing")
    with LambdaEmulator(None, handler=SLEEP) as emu:
        c = client(emu.url)
        with pytest.raises(c.exceptions.InvalidRequestContentException):
            c.invoke(FunctionName=FN, Payload=b"{not json")
        with pytest.raises(c.exceptions.RequestTooLargeException):
            c.invoke(FunctionName=FN, Payload=b'"' + b"x" * (6 * 1024 * 1024) + b'"')
        with pytest.raises(c.exceptions.ResourceNotFoundException) as ei:
            c.invoke(FunctionName="other", Payload=b"{}")
        assert "other" in ei.value.response["Error"]["Message"]
        with pytest.raises(c.exceptions.ResourceNotFoundException):
            c.invoke(FunctionName=FN, Qualifier="live", Payload=b"{}")
        arn = f"arn:aws:lambda:us-east-1:123456789012:function:{FN}"
        assert c.invoke(FunctionName=arn, Qualifier="$LATEST", Payload=b"{}")["StatusCode"] == 200
        assert c.invoke(FunctionName=FN, InvocationType="DryRun")["StatusCode"] == 204
        assert c.invoke(FunctionName=FN, InvocationType="Event", Payload=b"{}")["StatusCode"] == 202
        wait_until(lambda: emu.stats()["invocations"] == 2)


def held(tmp_path: Path) -> tuple[dict, Path]:
    """A sleep event that holds its environment until the returned path is touched (60 s at
    most): busy for as long as the test needs, on any machine."""
    go = tmp_path / "go"
    return {"sleep_s": 60, "until": str(go)}, go


def test_concurrency_exhausted_is_throttled_like_aws(tmp_path):
    hold, go = held(tmp_path)
    with LambdaEmulator(None, handler=SLEEP, concurrency=1) as emu, ThreadPoolExecutor(1) as pool:
        c = client(emu.url)
        slow = pool.submit(invoke, client(emu.url), hold)
        wait_until(lambda: emu.stats()["busy"] == 1)
        with pytest.raises(c.exceptions.TooManyRequestsException) as ei:
            c.invoke(FunctionName=FN, Payload=b'{"sleep_s": 0}')
        err = ei.value.response
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert err["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
        assert err["Error"]["Message"] == "Rate Exceeded."
        go.touch()
        first, _, _ = slow.result(timeout=30)
        out, rep, _ = invoke(c, {"sleep_s": 0})  # the freed environment, warm
        assert out["pid"] == first["pid"] and rep["init"] is None
        s = emu.stats()
        assert s["throttles"] == 1 and s["environments"] == 1 and s["invocations"] == 2


def test_keep_alive_expiry_reaps_the_environment_and_next_invoke_is_cold():
    with LambdaEmulator(None, handler=SLEEP, keep_alive_s=0.5) as emu:
        c = client(emu.url)
        first, rep, _ = invoke(c, {})
        assert rep["init"] is not None
        _, rep, _ = invoke(c, {})
        assert rep["init"] is None
        wait_until(lambda: emu.stats()["environments"] == 0)
        wait_until(lambda: not alive(first["pid"]))
        again, rep, _ = invoke(c, {})
        assert rep["init"] is not None and again["pid"] != first["pid"]
        assert emu.stats()["cold_starts"] == 2


def test_two_environments_scale_out_and_most_recent_is_reused(tmp_path):
    hold, go = held(tmp_path)
    with LambdaEmulator(None, handler=SLEEP, concurrency=2) as emu, ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(invoke, client(emu.url), hold) for _ in range(2)]
        wait_until(lambda: emu.stats()["busy"] == 2, 30, "two invokes in flight together")
        go.touch()
        pids = {f.result(timeout=30)[0]["pid"] for f in futs}
        assert len(pids) == 2 and emu.stats()["cold_starts"] == 2
        c = client(emu.url)
        a, rep, _ = invoke(c, {})
        b, _, _ = invoke(c, {})
        assert rep["init"] is None and a["pid"] == b["pid"] and a["pid"] in pids


def test_handler_exception_and_bad_return_are_unhandled_function_errors():
    with LambdaEmulator(None, handler="tests.lambda_test_handlers:fail") as emu:
        c = client(emu.url)
        out, rep, err = invoke(c, {"n": 3})
        assert err == "Unhandled"
        assert out["errorType"] == "ValueError" and out["errorMessage"] == "boom 3"
        assert out["stackTrace"] and rep["rid"] == out["requestId"]
        _, rep, err = invoke(c, {"n": 4})
        assert err == "Unhandled" and rep["init"] is None  # the environment survives
        assert emu.stats()["errors"] == 2
    with LambdaEmulator(None, handler="tests.lambda_test_handlers:unserialisable") as emu:
        out, _, err = invoke(client(emu.url), {})
        assert err == "Unhandled" and out["errorType"] == "Runtime.MarshalError"


def test_missing_handler_module_is_an_init_error():
    with LambdaEmulator(None, handler="tests.no_such_module:handler") as emu:
        out, rep, err = invoke(client(emu.url), {})
        assert err == "Unhandled" and out["errorType"] == "Runtime.ImportModuleError"
        assert "no_such_module" in out["errorMessage"] and rep["init"] is not None
        assert emu.stats()["environments"] == 0


def test_a_killed_worker_fails_its_invoke_and_the_next_one_succeeds():
    with LambdaEmulator(None, handler=SLEEP, concurrency=1) as emu, ThreadPoolExecutor(1) as pool:
        c = client(emu.url)
        first, _, _ = invoke(c, {})
        slow = pool.submit(invoke, client(emu.url), {"sleep_s": 60.0})  # ended by the kill
        wait_until(lambda: emu.stats()["busy"] == 1)
        os.kill(first["pid"], signal.SIGKILL)
        out, _, err = slow.result(timeout=30)
        assert err == "Unhandled" and out["errorType"] == "Runtime.ExitError"
        assert "signal: kill" in out["errorMessage"]
        again, rep, err = invoke(c, {})
        assert err is None and rep["init"] is not None and again["pid"] != first["pid"]
        s = emu.stats()
        assert s["errors"] == 1 and s["environments"] == 1 and s["cold_starts"] == 2


def test_function_timeout_kills_the_environment():
    with LambdaEmulator(None, handler=SLEEP, timeout_s=0.3) as emu:
        c = client(emu.url)
        first, _, _ = invoke(c, {})
        out, rep, err = invoke(c, {"sleep_s": 5.0})
        assert err == "Unhandled" and out["errorType"] == "Sandbox.Timedout"
        assert "timed out after 0.30 seconds" in out["errorMessage"]
        assert float(rep["dur"]) == pytest.approx(300.0)
        wait_until(lambda: not alive(first["pid"]))
        _, rep, err = invoke(c, {})
        assert err is None and rep["init"] is not None


def test_log_tail_has_the_handler_output_and_context_is_lambdas():
    handler = f"{REPO / 'tests' / 'lambda_test_handlers.py'}:echo"  # the file:function form
    with LambdaEmulator(None, handler=handler, memory_mb=512) as emu:
        r = client(emu.url).invoke(FunctionName=FN, Payload=b'{"k": 1}', LogType="Tail")
        out = json.loads(r["Payload"].read())
        lines = base64.b64decode(r["LogResult"]).decode().splitlines()
    rid = r["ResponseMetadata"]["RequestId"]
    assert lines[0] == f"START RequestId: {rid} Version: $LATEST"
    assert f"echo in {out['pid']}" in lines and f"END RequestId: {rid}" in lines
    assert out["event"] == {"k": 1} and out["request_id"] == rid
    assert out["function_name"] == FN and out["memory_mb"] == "512"
    assert 0 < out["remaining_ms"] <= 30_000


def test_stop_ends_every_worker_even_busy_ones(tmp_path):
    hold, go = held(tmp_path)
    emu = LambdaEmulator(None, handler=SLEEP, concurrency=3, timeout_s=600).start()
    with ThreadPoolExecutor(3) as pool:
        futs = [pool.submit(invoke, client(emu.url), hold) for _ in range(3)]
        wait_until(lambda: emu.stats()["busy"] == 3, 30, "three invokes in flight together")
        go.touch()
        pids = {f.result(timeout=30)[0]["pid"] for f in futs}
        busy = pool.submit(invoke, client(emu.url), {"sleep_s": 600})
        wait_until(lambda: emu.stats()["busy"] == 1)
        assert set(emu.worker_pids()) == pids
        # waiting out the busy handler would take 600 s: a stop within 120 s did not
        stopper = threading.Thread(target=lambda: (emu.stop(), emu.stop()))  # idempotent
        stopper.start()
        stopper.join(120)
        assert not stopper.is_alive(), "stop() waited for the busy handler"
        try:
            _, _, err = busy.result(timeout=30)
        except Exception as e:  # the connection was cut
            err = type(e).__name__
        assert err is not None
    assert len(pids) == 3 and not any(alive(p) for p in pids)


def worker_pids_of(parent: int) -> list[int]:
    """Live worker processes started by the emulator process `parent` (from /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                args = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"hybridserve.lambda_emulator.worker" in args and str(parent).encode() in args:
                found.append(int(d.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find worker processes")
def test_standalone_entry_serves_and_exits_on_sigterm(artifact, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp_path / "stderr.log", "wb") as err:
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hybridserve.lambda_emulator",
                "--artifact",
                str(artifact),
            ]
            + ["--port", "0", "--concurrency", "1", "--keep-alive-s", "30", "--memory-mb", "1024"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=REPO,
            text=True,
        )
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(p.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        assert line, (tmp_path / "stderr.log").read_text()
        m = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line[0])
        assert m, line
        x = np.ones((2, 16), np.float32)
        out, rep, err = invoke(client(m[1]), request(x))
        assert err is None and rep["mem"] == "1024" and rep["init"] is not None
        np.testing.assert_allclose(output(out), expected(artifact, x), rtol=1e-5, atol=1e-6)
        workers = worker_pids_of(p.pid)
        assert len(workers) == 1
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0
        assert not any(alive(w) for w in workers)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
