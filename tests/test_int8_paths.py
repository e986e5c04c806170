"""int8 kernel paths: ISA detection, the static saturation check, emulation, the per-path guard.

Nothing here depends on this machine's floating point: integer products are compared exactly,
the native run is compared with the emulation of whichever path `cpu_isa()` says this CPU
takes, and accuracy figures are asserted with the margins measured on every path (README).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from predictors.isa import EXACT, SATURATING, UNKNOWN, classify, cpu_isa

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# ISA (standard library only)
# --------------------------------------------------------------------------------------------

X86 = {
    "avx2": "sse2 sse4_1 sse4_2 avx avx2 fma",
    "avx512bw": "sse4_1 avx avx2 fma avx512f avx512bw avx512vl avx512dq",
    "avx512_vnni": "sse4_1 avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512_vnni",
    "avx_vnni": "sse4_1 avx avx2 fma avx_vnni",
    "amx": "avx2 fma avx512bw avx512_vnni amx_tile amx_int8 amx_bf16",
    "avx": "sse4_1 sse4_2 avx",
    "sse4.1": "sse2 sse4_1",
}
PATH_OF = {
    "avx2": SATURATING,
    "avx512bw": SATURATING,
    "avx512_vnni": EXACT,
    "avx_vnni": EXACT,
    "amx": EXACT,
    "avx": EXACT,
    "sse4.1": EXACT,
}


@pytest.mark.parametrize("isa", list(X86))
def test_x86_isa_and_int8_path_from_flags(isa):
    assert classify("x86_64", set(X86[isa].split())) == (isa, PATH_OF[isa])


def test_arm64_and_unknown():
    assert classify("aarch64", {"fp", "asimd", "asimddp"}) == ("arm64_dotprod", EXACT)
    assert classify("aarch64", {"asimd", "asimddp", "i8mm"}) == ("arm64_i8mm", EXACT)
    assert classify("riscv64", set()) == (UNKNOWN, UNKNOWN)
    assert classify("x86_64", set()) == (UNKNOWN, UNKNOWN)


def test_cpu_isa_reads_a_cpuinfo_file(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz\n"
        f"flags\t\t: {X86['avx512_vnni']}\n\nprocessor\t: 1\nflags\t\t: sse2\n"
    )
    got = cpu_isa(f, machine="x86_64")
    assert (got.isa, got.int8_path) == ("avx512_vnni", EXACT)
    assert got.cpu_model.startswith("Intel(R) Xeon(R) Platinum 8259CL")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd0c\n")
    assert cpu_isa(arm, machine="aarch64").isa == "arm64_dotprod"
    assert cpu_isa(tmp_path / "missing", machine="x86_64").isa == UNKNOWN


def test_isa_module_needs_neither_numpy_nor_onnx():
    code = (
        "import sys\n"
        "for m in ('numpy', 'onnx', 'onnxruntime'):\n"
        "    sys.modules[m] = None\n"
        "from predictors.isa import cpu_isa\n"
        "print(cpu_isa().int8_path)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in (EXACT, SATURATING, UNKNOWN)


# --------------------------------------------------------------------------------------------
# static check and emulation of one MatMulInteger
# --------------------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from predictors import int8_paths  # noqa: E402


def _matmul_integer(b: np.ndarray, zb=None, rank: int = 2):
    """A one-node graph: C = MatMulInteger(A uint8, B const, a_zero_point input, zb const)."""
    inits = [numpy_helper.from_array(b, "B")]
    ins = ["A", "B", "za"]
    if zb is not None:
        inits.append(numpy_helper.from_array(np.asarray(zb, b.dtype), "zb"))
        ins.append("zb")
    k, n = b.shape
    lead = [None] * (rank - 1)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ins, ["C"], name="mm")],
        "g",
        [
            helper.make_tensor_value_info("A", TensorProto.UINT8, [*lead, k]),
            helper.make_tensor_value_info("za", TensorProto.UINT8, []),
        ],
        [helper.make_tensor_value_info("C", TensorProto.INT32, [*lead, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _ort(model, feed):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]


def _reference(a: np.ndarray, b: np.ndarray, za: int, zb, path: str) -> np.ndarray:
    """Integer reference: exact, or u8 * s8 pairs (2i, 2i+1) clipped to int16, then zero points."""
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    zb64 = np.zeros(b.shape[1], np.int64) if zb is None else np.broadcast_to(zb, b.shape[1])
    if path == EXACT or b.dtype == np.uint8:
        return ((a64 - za) @ (b64 - zb64)).astype(np.int32)
    k = b.shape[0]
    if k % 2:
        a64 = np.concatenate([a64, np.zeros((*a64.shape[:-1], 1), np.int64)], -1)
        b64 = np.concatenate([b64, np.zeros((1, b64.shape[1]), np.int64)])
    pairs = a64[..., 0::2, None] * b64[0::2] + a64[..., 1::2, None] * b64[1::2]  # (.., K/2, N)
    raw = np.clip(pairs, -32768, 32767).sum(-2)
    out = raw - zb64 * a.astype(np.int64).sum(-1, keepdims=True) - za * b.astype(np.int64).sum(0)
    return (out + k * za * zb64).astype(np.int32)


def test_saturation_report_pair_bounds():
    def report(b):
        return int8_paths.saturation_report(_matmul_integer(b))

    b = np.zeros((4, 3), np.int8)
    b[0, 0] = b[1, 0] = 127  # one same-sign pair: 255 * 254 > 32767
    r = report(b)
    assert not r.saturation_free and r.max_pair == 255 * 254 and r.risky
    b[1, 0] = -127  # opposite signs stay between the two products
    assert report(b).saturation_free
    b = np.full((5, 3), 64, np.int8)  # reduce_range's bound; odd K pads a zero
    r = report(b)
    assert r.saturation_free and r.max_pair == 255 * 128 == 32640
    b = np.full((4, 3), -65, np.int8)  # 255 * -130 < -32768
    assert not report(b).saturation_free
    assert report(np.full((4, 3), 255, np.uint8)).saturation_free  # U8U8: exact everywhere


@pytest.mark.parametrize("path", [EXACT, SATURATING])
@pytest.mark.parametrize(
    ("dtype", "k", "zb", "rank"),
    [(np.int8, 64, None, 2), (np.int8, 33, None, 3), (np.uint8, 48, 128, 2)],
)
def test_emulation_computes_the_paths_integer_semantics(path, dtype, k, zb, rank):
    rng = np.random.default_rng(k)
    lo, hi = (-128, 128) if dtype == np.int8 else (0, 256)
    b = rng.integers(lo, hi, (k, 24)).astype(dtype)
    shape = (2, 5, k) if rank == 3 else (7, k)
    a = rng.integers(0, 256, shape).astype(np.uint8)
    a[0] = 255  # saturates wherever a pair of large same-sign weights meets it
    model = _matmul_integer(b, zb, rank)
    feed = {"A": a, "za": np.array(113, np.uint8)}
    got = _ort(int8_paths.emulated_model(model, path), feed)
    want = _reference(a, b, 113, zb, path)
    np.testing.assert_array_equal(got, want)
    if path == SATURATING and dtype == np.int8:  # the case is one where the paths differ
        assert not np.array_equal(want, _reference(a, b, 113, zb, EXACT))


def test_native_integer_products_follow_this_machines_path():
    path = cpu_isa().int8_path
    if path == UNKNOWN:
        pytest.skip("this CPU's int8 path is not known")
    rng = np.random.default_rng(0)
    b = rng.integers(-128, 128, (256, 64)).astype(np.int8)
    a = rng.integers(0, 256, (16, 256)).astype(np.uint8)
    a[:4] = 255
    feed = {"A": a, "za": np.array(128, np.uint8)}
    model = _matmul_integer(b)
    np.testing.assert_array_equal(_ort(model, feed), _reference(a, b, 128, None, path))
    np.testing.assert_array_equal(
        _ort(model, feed), _ort(int8_paths.emulated_model(model, path), feed)
    )


def test_unsupported_integer_ops_are_reported():
    b = np.ones((4, 2), np.int8)
    model = _matmul_integer(b)
    model.graph.node[0].op_type = "ConvInteger"
    with pytest.raises(int8_paths.EmulationError, match="ConvInteger is not emulated"):
        int8_paths.emulated_model(model, EXACT)
    with pytest.raises(ValueError, match="unknown int8 path"):
        int8_paths.emulated_model(_matmul_integer(b), "fast")
    signed = _matmul_integer(b)
    signed.graph.input[0].type.tensor_type.elem_type = TensorProto.INT8
    with pytest.raises(int8_paths.EmulationError, match="not known to be uint8"):
        int8_paths.emulated_model(signed, SATURATING)


# --------------------------------------------------------------------------------------------
# whole models: the reference models' int8 variants
# --------------------------------------------------------------------------------------------

pytest.importorskip("torch")
from predictors import sources, variants  # noqa: E402
from predictors.guard import AccuracyError, accuracy_guard, guard_inputs  # noqa: E402


@pytest.fixture(scope="module")
def fp32_models(tmp_path_factory) -> dict[str, tuple[Path, sources.SourceModel]]:
    out = tmp_path_factory.mktemp("fp32")
    models = {}
    for name in ("mlp", "tinybert"):
        src = sources.reference_source(name)
        models[name] = (src.write_onnx(out / f"{name}.onnx"), src)
    return models


def _variant(fp32_models, name, fmt, tmp_path) -> Path:
    return variants.quantize_int8(fp32_models[name][0], tmp_path / f"{name}-{fmt}.onnx", fmt=fmt)


def _session_outputs(model, feed):
    src = model if isinstance(model, (str, Path)) else None
    data = str(src) if src else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("fmt", ["s8", "s8-rr"])
def test_native_run_equals_the_emulation_of_this_machines_path(fp32_models, fmt, tmp_path):
    path = cpu_isa().int8_path
    if path == UNKNOWN:
        pytest.skip("this CPU's int8 path is not known")
    variant = _variant(fp32_models, "mlp", fmt, tmp_path)
    src = fp32_models["mlp"][1]
    feed = guard_inputs(src.inputs, src.input_ranges, 16, 0)
    native = _session_outputs(variant, feed)
    emulated = _session_outputs(int8_paths.emulated_model(variant, path), feed)
    assert all(np.array_equal(x, y) for x, y in zip(native, emulated, strict=True))


@pytest.mark.parametrize("name", ["mlp", "tinybert"])
def test_default_int8_is_saturation_free_and_passes_on_every_path(fp32_models, name, tmp_path):
    fp32, src = fp32_models[name]
    variant = _variant(fp32_models, name, variants.DEFAULT_INT8_FORMAT, tmp_path)
    report = int8_paths.saturation_report(variant)
    assert report.saturation_free and 0 < report.max_pair <= 32640 and report.gemms >= 3
    for seed in (0, 1, 2):
        acc = accuracy_guard(
            fp32, variant, src.inputs, variant="int8", ranges=src.input_ranges,
            samples=16, seed=seed, threshold=0.99, label=name,
        )  # fmt: skip
        assert set(acc["paths"]) == {"native", EXACT, SATURATING}
        # measured >= 0.9998 (mlp) and >= 0.9997 (tinybert) on every path and seed
        assert all(f["cosine"] >= 0.999 for f in acc["paths"].values()), acc["paths"]
        assert acc["saturation_free"] is True
        assert acc["cosine"] == min(f["cosine"] for f in acc["paths"].values())


def test_full_range_s8_fails_the_saturating_path_on_any_machine(fp32_models, tmp_path):
    fp32, src = fp32_models["mlp"]
    variant = _variant(fp32_models, "mlp", "s8", tmp_path)
    assert not int8_paths.saturation_report(variant).saturation_free
    with pytest.raises(AccuracyError) as e:
        accuracy_guard(
            fp32, variant, src.inputs, variant="int8", ranges=src.input_ranges,
            samples=8, seed=0, threshold=0.99, label="mlp-int8",
        )  # fmt: skip
    msg = str(e.value)
    assert msg.startswith("mlp-int8: the int8 variant fails the accuracy guard on the ")
    assert f"{SATURATING} path: pooled-cosine to fp32 0.9" in msg and "< threshold 0.99" in msg
    paths = e.value.accuracy["paths"]
    assert e.value.accuracy["worst_path"] == SATURATING
    assert paths[SATURATING]["cosine"] < 0.985  # measured 0.976
    assert paths[EXACT]["cosine"] > 0.9995  # measured 0.99997
    native_path = cpu_isa().int8_path
    if native_path != UNKNOWN:  # the native run is one of the two
        assert paths["native"] == paths[native_path]
