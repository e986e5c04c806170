"""Reading multi-model trace files: a per-request CSV with a model column, a directory of one
trace file per model, or a manifest naming one file per model.

Each reader returns the parts of a MultiTrace (`simulations.multitrace` builds it; keeping the
class out of here keeps the import graph acyclic). Every problem is a TraceError naming the
file, the line or field, and what was expected, like the single-model loader's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

from simulations.corpus import load_real, real_traces
from simulations.trace_csv import (
    _check_span,
    _columns,
    _find_column,
    _open_csv,
    _parse_times,
    decode_text,
)
from simulations.trace_errors import MAX_COUNT_PER_S, TraceError, trace_error
from simulations.traces import Trace, _read_bytes, _trace_name, load_trace

__all__ = ["MAX_CELLS", "Parts", "model_name_of", "read_multi_trace", "total_problem"]

#: Refuse a multi-trace of more than this many (model, second) cells: 8 GB of int64. A stray
#: timestamp a year away times a thousand models would otherwise allocate hundreds of GB.
MAX_CELLS = 1_000_000_000
#: Kind suffixes that the shared traces put before the extension ('x.per-second.txt.gz').
_KIND_SUFFIXES = (".per-second", ".requests", ".counts", ".periods")
_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_SOURCES = (
    "a per-request CSV with a model column, a directory holding one trace file per model, or a "
    "YAML/JSON manifest {models: {name: path}}"
)


class Parts(NamedTuple):
    """What a reader found: MultiTrace's fields, in its order."""

    name: str
    models: tuple[str, ...]
    counts: np.ndarray
    source: str


def total_problem(counts: np.ndarray, models: Sequence[str]) -> str | None:
    """Why the per-second total across models is too high, or None.

    Callers have already bounded every cell by MAX_COUNT_PER_S, so the int64 sum over models
    is exact (it would need 9e11 models to overflow); the total is then bounded like a single
    trace's, which keeps every later total (x MAX_SPAN_S) exact as well.
    """
    totals = counts.sum(axis=0)
    if not (totals > MAX_COUNT_PER_S).any():
        return None
    second = int(np.argmax(totals > MAX_COUNT_PER_S))
    top = np.argsort(counts[:, second])[::-1][:3]
    busiest = ", ".join(f"{models[i]}={counts[i, second]:,}" for i in top)
    return (
        f"at second {second} the models together receive {totals[second]:,} requests "
        f"({busiest}, ...), above the {MAX_COUNT_PER_S:,} per second a trace may have"
    )


# --------------------------------------------------------------------------------------------
# per-request CSV with a model column
# --------------------------------------------------------------------------------------------


def _check_cells(label: str, n_models: int, seconds: int) -> None:
    """Refuse a (models x seconds) array too large to hold, before allocating it."""
    if n_models * seconds > MAX_CELLS:
        raise trace_error(
            label,
            f"{n_models} models x {seconds:,} seconds = {n_models * seconds:,} cells "
            f"({n_models * seconds * 8 / 1e9:.0f} GB)",
            f"at most {MAX_CELLS:,} model-seconds (fewer models or a shorter span)",
        )


def _check_total(label: str, counts: np.ndarray, models: Sequence[str]) -> None:
    problem = total_problem(counts, models)
    if problem:
        raise trace_error(label, problem, f"at most {MAX_COUNT_PER_S:,} requests per second")


def _time_index(header: list[str], m_index: int, column: str | None, label: str, line: int) -> int:
    """The timestamp column: the one given, else TIMESTAMP (as load_trace), else the one column
    named like a time (as corpus.load_real does for mooncake's ``timestamp_s``)."""
    columns = ", ".join(map(repr, header))
    if column is not None:
        index = _find_column(header, (column,))
        if index is None:
            raise trace_error(
                label,
                f"no {column!r} column; columns found: {columns}",
                f"a {column!r} timestamp column (any case), or another timestamp_column=",
                line=line,
            )
    else:
        index = _find_column(header, ("TIMESTAMP",))
        if index is None:
            named = [i for i, h in enumerate(header) if "time" in h.lower() and i != m_index]
            if len(named) != 1:
                raise trace_error(
                    label,
                    f"cannot tell the timestamp column: none is named 'TIMESTAMP' and "
                    f"{len(named)} are named like a time; columns found: {columns}",
                    "a 'TIMESTAMP' column, exactly one column whose name contains 'time', or "
                    "timestamp_column=",
                    line=line,
                )
            index = named[0]
    if index == m_index:
        raise trace_error(
            label,
            f"column {header[index]!r} is asked to be both the model and the timestamp",
            "two different columns",
            line=line,
        )
    return index


def _load_requests_csv(
    file: Path, label: str, model_column: str, timestamp_column: str | None
) -> Parts:
    """One row per request: second = floor(ts - earliest ts over all models), as load_trace.

    The CSV is read with the single-model loader's parser (not pandas) so timestamps (epoch s,
    epoch ms, ISO-8601) mean the same in both, every message carries the exact line even past
    blank or quoted multi-line rows, and a model named 'NA' or 'null' stays a name.
    """
    text = decode_text(_read_bytes(file, label), label)
    table = _open_csv(text, label)
    header = table.header
    m_index = _find_column(header, (model_column,))
    if m_index is None:
        raise trace_error(
            label,
            f"no {model_column!r} column; columns found: {', '.join(map(repr, header))}",
            f"a per-request CSV with a {model_column!r} column (any case) naming each request's "
            "model (or pass model_column=), or a directory holding one trace file per model",
            line=table.header_line,
        )
    t_index = _time_index(header, m_index, timestamp_column, label, table.header_line)
    (names, values), lines = _columns(table, [m_index, t_index])
    if not names:
        raise trace_error(label, "no request rows after the header", "one row per request")
    stripped = np.array([n.strip() for n in names], dtype=str)
    empty = stripped == ""
    if empty.any():
        i = int(np.argmax(empty))
        raise trace_error(
            label,
            f"empty model name in column {header[m_index]!r}",
            "every row to name its model",
            line=lines[i],
        )
    times, per_second = _parse_times(values, lines, label, header[t_index])
    if times.dtype.kind == "f" and (times < 0).any():
        i = int(np.argmax(times < 0))
        raise trace_error(
            label,
            f"{header[t_index]} {values[i].strip()!r} is negative",
            "timestamps >= 0 (epoch seconds or milliseconds, or seconds from the start)",
            line=lines[i],
        )
    earliest = times.min()
    _check_span(float(times.max() - earliest) / per_second, label, "timestamps")
    second = np.floor_divide(times - earliest, per_second).astype(np.int64)
    models, row = np.unique(stripped, return_inverse=True)
    n, seconds = models.size, int(second.max()) + 1
    _check_cells(label, n, seconds)
    counts = np.bincount(row * seconds + second, minlength=n * seconds).reshape(n, seconds)
    models_t = tuple(str(m) for m in models)
    _check_total(label, counts, models_t)  # ten million rows in one second: a bad log
    return Parts(_trace_name(file), models_t, counts, f"{label} (requests by model)")


# --------------------------------------------------------------------------------------------
# one trace file per model: a directory, or a manifest
# --------------------------------------------------------------------------------------------


def model_name_of(path: str | os.PathLike[str]) -> str:
    """Model name of a per-model trace file: its name without the trace suffixes.

    'bert.per-second.txt.gz' -> 'bert', 'resnet.requests.csv' -> 'resnet', 'mlp.txt' -> 'mlp'.
    """
    name = _trace_name(Path(path))
    for kind in _KIND_SUFFIXES:
        if name.lower().endswith(kind) and len(name) > len(kind):
            return name[: -len(kind)]
    return name


def _load_model_file(prefix: str, model: str, file: Path, timestamp_column: str | None) -> Trace:
    """One model's file through load_trace; its error comes back prefixed with the model (and
    with ``prefix``: the manifest that named the file, whose path the inner error lacks)."""
    try:
        if timestamp_column is not None:
            return load_trace(file, timestamp_column=timestamp_column)
        return load_real(file)  # a request CSV's time column found as the corpus finds it
    except TraceError as exc:
        err = TraceError(f"{prefix}model {model!r}: {exc}")
        err.path, err.line = exc.path, exc.line
        raise err from None


def _stack(
    label: str, name: str, files: Mapping[str, Path], timestamp_column: str | None, kind: str
) -> Parts:
    """Load one file per model, align them at second 0 and pad the shorter ones with zeros."""
    prefix = f"{label}: " if kind == "manifest" else ""
    traces = {m: _load_model_file(prefix, m, f, timestamp_column) for m, f in files.items()}
    models = tuple(traces)
    seconds = max(t.seconds for t in traces.values())
    _check_cells(label, len(models), seconds)
    counts = np.zeros((len(models), seconds), dtype=np.int64)
    for row, trace in zip(counts, traces.values(), strict=True):  # a loop over models
        row[: trace.seconds] = trace.counts
    _check_total(label, counts, models)
    return Parts(name, models, counts, f"{label} ({kind}, one file per model)")


def _load_directory(folder: Path, label: str, timestamp_column: str | None) -> Parts:
    files: dict[str, Path] = {}
    for path in real_traces(folder):  # sorted; README and hidden files skipped
        model = model_name_of(path)
        if model in files:
            raise trace_error(
                label,
                f"files {files[model].name!r} and {path.name!r} both name model {model!r}",
                "one trace file per model (model name = file name without "
                ".per-second/.requests/.txt/.csv/.gz)",
            )
        files[model] = path
    if not files:
        raise trace_error(
            label,
            "the directory holds no trace files",
            "one trace file per model (per-second counts .txt[.gz], or a CSV), named after "
            "the model",
        )
    return _stack(label, folder.name, files, timestamp_column, "directory")


def _load_manifest(file: Path, label: str, timestamp_column: str | None) -> Parts:
    """``{models: {name: path}}`` in YAML or JSON; paths are relative to the manifest."""
    text = decode_text(_read_bytes(file, label), label)
    expected = "a manifest {models: {model name: trace file path}}"
    try:
        doc = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise trace_error(label, f"invalid JSON ({exc.msg})", expected, line=exc.lineno) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise trace_error(label, f"invalid YAML ({problem})", expected, line=line) from None
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict) or not models:
        found = type(models).__name__ if isinstance(doc, dict) else type(doc).__name__
        raise trace_error(label, f"field 'models' is missing or empty (found {found})", expected)
    files: dict[str, Path] = {}
    for name, path in models.items():
        if not isinstance(name, str) or not name.strip():
            raise trace_error(label, f"models: {name!r} is not a model name", expected)
        if not isinstance(path, str) or not path.strip():
            raise trace_error(label, f"models.{name}: {path!r} is not a file path", expected)
        files[name] = file.parent / path  # an absolute path stays absolute
    return _stack(label, file.stem, files, timestamp_column, "manifest")


def read_multi_trace(
    path: str | os.PathLike[str], model_column: str, timestamp_column: str | None
) -> Parts:
    """The parts of the multi-trace at ``path`` (see ``simulations.multitrace.load_multi_trace``)."""
    label = os.fspath(path)
    file = Path(path)
    if file.is_dir():
        return _load_directory(file, label, timestamp_column)
    if not file.exists():
        raise trace_error(label, "no such file or directory", _SOURCES)
    if file.suffix.lower() in _MANIFEST_SUFFIXES:
        return _load_manifest(file, label, timestamp_column)
    return _load_requests_csv(file, label, model_column, timestamp_column)
