"""Which CPU this is, and which integer GEMM path onnxruntime's MLAS takes on it.

Standard library only: the Lambda handler logs it at cold start, the build records it in the
manifest and profiles record it next to the latencies measured here.

onnxruntime quantizes activations to uint8 and multiplies them with the int8 weights in MLAS's
U8S8 kernels, chosen per CPU at start-up (and not selectable):

- ``exact-int32``: AMX, AVX-512 VNNI and AVX-VNNI (``vpdpbusd``), SSE4.1/AVX (widening
  multiplies), arm64 (``udot``/``sdot`` or widening NEON): every product summed exactly in int32;
- ``int16-saturating-pairs``: AVX2 and AVX-512BW without VNNI (``vpmaddubsw``): the products of
  the raw u8 activations with the int8 weights are summed in pairs along K, (2i, 2i+1), into a
  *saturating* int16 before widening, so a pair beyond 32767 is clipped. uint8 weights (U8U8
  kernels) widen to int16 first and are exact on every path.

Run and compared bit for bit with the emulation (`predictors.int8_paths`): AVX2, and SSE4.2,
AVX and AVX2 CPU models under QEMU. AVX-512, VNNI, AMX and arm64 follow MLAS's kernel choice
(QEMU cannot run AVX-512). A CPU this cannot place is ``unknown``; the build checks both paths
whatever this says.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

EXACT = "exact-int32"
SATURATING = "int16-saturating-pairs"
INT8_PATHS = (EXACT, SATURATING)
UNKNOWN = "unknown"

# x86 ISA names from /proc/cpuinfo flags, best first, with the path MLAS's U8S8 GEMM takes there
_X86 = (
    ("amx", ("amx_int8", "amx_tile"), EXACT),
    ("avx512_vnni", ("avx512_vnni", "avx512bw"), EXACT),
    ("avx_vnni", ("avx_vnni", "avx2"), EXACT),
    ("avx512bw", ("avx512bw", "avx512vl", "avx512dq"), SATURATING),
    ("avx2", ("avx2", "fma"), SATURATING),
    ("avx", ("avx", "sse4_1"), EXACT),  # AVX without AVX2 runs MLAS's SSE4.1 kernels
    ("sse4.1", ("sse4_1",), EXACT),
    ("sse2", ("sse2",), EXACT),  # MLAS SSE2 kernel: widen to int16, pmaddwd (not run here)
)


@dataclass(frozen=True)
class CpuIsa:
    """This CPU's best integer-GEMM ISA, the int8 path onnxruntime takes on it, its model name."""

    isa: str
    int8_path: str
    cpu_model: str
    machine: str

    def as_json(self) -> dict[str, str]:
        return asdict(self)


def _cpuinfo(path: Path) -> tuple[set[str], str]:
    """(feature flags, model name) of the first processor in a /proc/cpuinfo-style file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return set(), ""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    return flags, model


def classify(machine: str, flags: set[str]) -> tuple[str, str]:
    """(isa, int8 path) for a `platform.machine()` value and /proc/cpuinfo flags."""
    m = machine.lower()
    if m in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "arm64_i8mm", EXACT
        if "asimddp" in flags or sys.platform == "darwin":  # every Apple arm64 has dotprod
            return "arm64_dotprod", EXACT
        return "arm64", EXACT
    if m in ("x86_64", "amd64", "i386", "i686", "x86"):
        for name, need, path in _X86:
            if all(f in flags for f in need):
                return name, path
    return UNKNOWN, UNKNOWN


def cpu_isa(cpuinfo: str | Path = "/proc/cpuinfo", machine: str | None = None) -> CpuIsa:
    """This machine's `CpuIsa` (from /proc/cpuinfo and `platform.machine()`).

    /proc/cpuinfo lists what the kernel lets user code run (AVX-512 off in the OS shows as off),
    which is what MLAS's CPUID and XGETBV checks see; elsewhere (macOS, Windows) the ISA is
    known only for arm64, and x86 is ``unknown``.
    """
    machine = machine or platform.machine()
    flags, model = _cpuinfo(Path(cpuinfo))
    isa, path = classify(machine, flags)
    return CpuIsa(isa, path, model or platform.processor() or UNKNOWN, machine)


def onnxruntime_version() -> str | None:
    """The installed onnxruntime's version, without importing it (None if absent)."""
    from importlib import metadata

    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None
