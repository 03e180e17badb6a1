"""Prometheus metrics that stay correct when several server workers serve one port.

Each worker process adds to its own file of counters (`worker-<pid>.metrics` in
`METRICS_DIR`, memory-mapped, so an increment is a write to memory, not a system
call); `/metrics` sums the files of every worker, including workers that have since
exited, so counters never go backwards while the pod lives. Without `METRICS_DIR`
the counters live in this process's memory only. Every value is a monotonic count
or sum: this module must never store a gauge that a dead worker's file would leave
stale, and never put client-chosen text (paths, bodies) into a label.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
from bisect import bisect_left
from collections import defaultdict
from pathlib import Path

from flask import Flask, current_app

from app import metric_names, prediction_histogram
from app.prediction_histogram import PredictionHistogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FILE_PREFIX = "worker-"
FILE_SUFFIX = ".metrics"
_EXTENSION_KEY = "modelship.metrics"
_HISTOGRAM_KEY = "modelship.prediction_histogram"

# Seconds; dense below 25 ms, where a healthy tabular model answers.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BUCKET_LABELS = tuple(repr(bound) for bound in LATENCY_BUCKETS) + ("+Inf",)
# Methods outside this set become "other": the method is client input, and every
# distinct label value is a new time series.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"

REQUESTS, LATENCY, PREDICTIONS = metric_names.REQUESTS, metric_names.LATENCY, \
    metric_names.PREDICTIONS

_DESCRIPTIONS = {
    REQUESTS: ("counter", "HTTP requests answered, by method, route and status."),
    LATENCY: ("histogram", "Time from reading a request to returning its response."),
    PREDICTIONS: ("counter", "Rows scored by the model."),
    prediction_histogram.CLASS_SERIES: ("counter", "Rows scored, by the class predicted."),
    prediction_histogram.VALUE_SERIES: ("histogram", "Rows scored, by the value predicted "
                                                     "(fixed buckets)."),
    prediction_histogram.NONFINITE_SERIES: ("counter", "Rows the model answered with NaN "
                                                       "or infinity."),
    "model_info": ("gauge", "The model this process serves (always 1)."),
    "app_info": ("gauge", "The code this process runs (always 1)."),
}

# File layout: an 8-byte header holding the bytes in use, then entries of
# [key length: uint32][key: UTF-8, padded to 8 bytes][value: float64].
_HEADER = struct.Struct("<Q")
_KEY_LENGTH = struct.Struct("<I")
_VALUE = struct.Struct("<d")
_INITIAL_SIZE = 64 * 1024


def _padded(length: int) -> int:
    return (length + 7) // 8 * 8


class MetricStore:
    """This process's counters, kept where every worker's `/metrics` can read them."""

    def __init__(self, directory: str | None = None):
        self._directory = Path(directory) if directory else None
        self._lock = threading.Lock()
        self._pid = None

    def add(self, name: str, labels: tuple, amount: float = 1.0) -> None:
        """Add `amount` to the series `name{labels}`; labels are (key, value) pairs."""
        with self._lock:
            if self._pid != os.getpid():
                self._open()  # first use in this process, or we are a freshly forked worker
            offset = self._offsets.get((name, labels))
            if offset is None:
                offset = self._new_entry(name, labels)
            self._add_at(offset, amount)

    def record_request(self, method: str, route: str, status: str, seconds: float) -> None:
        """Count one answered request and its latency: the per-request hot path."""
        with self._lock:
            if self._pid != os.getpid():
                self._open()
            key = (method, route, status)
            indexes = self._request_indexes.get(key)
            if indexes is None:
                indexes = self._request_indexes[key] = self._request_entries(*key)
            count_index, sum_index, latency_count_index, bucket_indexes = indexes
            values = self._values
            values[count_index] += 1.0
            values[sum_index] += seconds
            values[latency_count_index] += 1.0
            values[bucket_indexes[bisect_left(LATENCY_BUCKETS, seconds)]] += 1.0

    def record_predictions(self, histogram: PredictionHistogram, predictions: list) -> None:
        """Count one answer's rows, in total and by what they predicted: once per answer,
        one locked add per distinct bucket."""
        counts = histogram.counts(predictions)
        with self._lock:
            if self._pid != os.getpid():
                self._open()
            offsets = self._offsets
            offset = offsets.get((PREDICTIONS, ()))
            if offset is None:
                offset = self._new_entry(PREDICTIONS, ())
            self._add_at(offset, len(predictions))
            for key, count in counts.items():
                offset = offsets.get(key)
                if offset is None:
                    offset = self._new_entry(*key)
                self._add_at(offset, count)

    def _request_entries(self, method: str, route: str, status: str) -> tuple:
        labels = (("route", route), ("status", status))

        def entry(name, entry_labels):  # as an index into self._values
            offset = self._offsets.get((name, entry_labels))
            if offset is None:
                offset = self._new_entry(name, entry_labels)
            return offset // _VALUE.size

        return (
            entry(REQUESTS, (("method", method),) + labels),
            entry(LATENCY + "_sum", labels),
            entry(LATENCY + "_count", labels),
            [entry(LATENCY + "_bucket", labels + (("le", bound),)) for bound in _BUCKET_LABELS],
        )

    def _add_at(self, offset: int, amount: float) -> None:
        self._values[offset // _VALUE.size] += amount

    def totals(self) -> dict:
        """{(name, labels): value} summed over every worker that shares the directory."""
        totals = defaultdict(float)
        if self._directory is None:
            if self._pid == os.getpid():
                _read_entries(bytes(self._memory), totals)
            return totals
        for path in self._directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"):
            try:
                _read_entries(path.read_bytes(), totals)
            except FileNotFoundError:
                continue
        return totals

    def _open(self) -> None:
        self._pid = os.getpid()
        self._offsets = {}
        self._request_indexes = {}
        if self._directory is None:
            self._file = None
            self._memory = mmap.mmap(-1, _INITIAL_SIZE)
        else:
            self._directory.mkdir(parents=True, exist_ok=True)
            path = self._directory / f"{FILE_PREFIX}{self._pid}{FILE_SUFFIX}"
            self._file = open(path, "w+b")
            self._file.truncate(_INITIAL_SIZE)
            self._memory = mmap.mmap(self._file.fileno(), _INITIAL_SIZE)
        self._values = self._value_view()
        _HEADER.pack_into(self._memory, 0, _HEADER.size)

    def _value_view(self) -> memoryview:
        # The file as native float64s (little-endian, as _VALUE writes them, on every
        # platform the image is built for): values sit at multiples of 8 bytes, and
        # adding through this view costs a fifth of unpacking and packing with struct.
        return memoryview(self._memory).cast("d")

    def _new_entry(self, name: str, labels: tuple) -> int:
        key = json.dumps([name, [list(pair) for pair in labels]]).encode()
        (used,) = _HEADER.unpack_from(self._memory, 0)
        entry_size = _padded(_KEY_LENGTH.size + len(key)) + _VALUE.size
        if used + entry_size > len(self._memory):
            self._grow(used + entry_size)
        _KEY_LENGTH.pack_into(self._memory, used, len(key))
        key_start = used + _KEY_LENGTH.size
        self._memory[key_start : key_start + len(key)] = key
        value_offset = used + entry_size - _VALUE.size
        _VALUE.pack_into(self._memory, value_offset, 0.0)
        # The header moves last, so a reader never sees a half-written entry.
        _HEADER.pack_into(self._memory, 0, used + entry_size)
        self._offsets[(name, labels)] = value_offset
        return value_offset

    def _grow(self, needed: int) -> None:
        size = len(self._memory)
        while size < needed:
            size *= 2
        self._values.release()  # an mmap with a view on it can be neither copied nor closed
        if self._file is None:
            bigger = mmap.mmap(-1, size)
            bigger[: len(self._memory)] = self._memory[:]
            self._memory = bigger
        else:
            self._memory.close()
            self._file.truncate(size)
            self._memory = mmap.mmap(self._file.fileno(), size)
        self._values = self._value_view()


def _read_entries(data: bytes, totals: dict) -> None:
    if len(data) < _HEADER.size:
        return
    (used,) = _HEADER.unpack_from(data, 0)
    offset = _HEADER.size
    while offset < min(used, len(data)):
        (key_length,) = _KEY_LENGTH.unpack_from(data, offset)
        key_start = offset + _KEY_LENGTH.size
        name, labels = json.loads(data[key_start : key_start + key_length])
        entry_size = _padded(_KEY_LENGTH.size + key_length) + _VALUE.size
        (value,) = _VALUE.unpack_from(data, offset + entry_size - _VALUE.size)
        totals[(name, tuple(tuple(pair) for pair in labels))] += value
        offset += entry_size


# --- rendering --------------------------------------------------------------------


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _series(name: str, labels, value) -> str:
    if labels:
        rendered = ",".join(f'{key}="{_escape(text)}"' for key, text in labels)
        name = f"{name}{{{rendered}}}"
    return f"{name} {float(value)!r}"


def _header(name: str) -> list[str]:
    kind, description = _DESCRIPTIONS[name]
    return [f"# HELP {name} {description}", f"# TYPE {name} {kind}"]


def render(totals: dict, info: dict) -> str:
    """The Prometheus text exposition of `totals` plus the constant `info` gauges."""
    lines = []
    for name in (REQUESTS, PREDICTIONS, prediction_histogram.CLASS_SERIES,
                 prediction_histogram.NONFINITE_SERIES):
        lines += _header(name)
        for (series_name, labels), value in sorted(totals.items()):
            if series_name == name:
                lines.append(_series(name, labels, value))
    lines += _value_histogram(totals)

    lines += _header(LATENCY)
    buckets = defaultdict(lambda: [0.0] * len(_BUCKET_LABELS))
    for (series_name, labels), value in totals.items():
        if series_name == LATENCY + "_bucket":
            *rest, (_, bound) = labels
            buckets[tuple(rest)][_BUCKET_LABELS.index(bound)] += value
    for labels in sorted(buckets):
        cumulative = 0.0
        for bound, count in zip(_BUCKET_LABELS, buckets[labels]):
            cumulative += count
            lines.append(_series(LATENCY + "_bucket", labels + (("le", bound),), cumulative))
        lines.append(_series(LATENCY + "_sum", labels, totals[(LATENCY + "_sum", labels)]))
        lines.append(_series(LATENCY + "_count", labels, totals[(LATENCY + "_count", labels)]))

    for name, labels in info.items():
        lines += _header(name)
        lines.append(_series(name, tuple(labels.items()), 1))
    return "\n".join(lines) + "\n"


def _value_histogram(totals: dict) -> list[str]:
    """The predicted-value buckets, cumulative as Prometheus histograms are."""
    name = prediction_histogram.VALUE_SERIES
    counts = {labels[0][1]: value for (series_name, labels), value in totals.items()
              if series_name == name + "_bucket"}
    if not counts:
        return []
    lines = _header(name)
    cumulative = 0.0
    for bound in sorted(counts, key=float):  # float("+Inf") sorts last
        cumulative += counts[bound]
        lines.append(_series(name + "_bucket", (("le", bound),), cumulative))
    if prediction_histogram.INF_LABEL not in counts:
        lines.append(_series(name + "_bucket", (("le", prediction_histogram.INF_LABEL),),
                             cumulative))
    lines.append(_series(name + "_count", (), cumulative))
    return lines


# --- wiring into the app ----------------------------------------------------------


def store() -> MetricStore:
    return current_app.extensions[_EXTENSION_KEY]


def store_of(app: Flask) -> MetricStore:
    """The app's store, for code running outside a Flask request (app.front)."""
    return app.extensions[_EXTENSION_KEY]


def histogram_of(app: Flask, model) -> PredictionHistogram:
    """The buckets `model`'s predictions are counted in, worked out once per model."""
    cached = app.extensions.get(_HISTOGRAM_KEY)
    if cached is None or cached[0] is not model:
        # Labels (integers, text) are classes even without a probability output.
        by_class = model.is_classifier or model.prediction_type != "number"
        histogram = PredictionHistogram.for_model(model.metadata, by_class,
                                                  app.config.get("PREDICTION_BUCKETS") or "")
        cached = app.extensions[_HISTOGRAM_KEY] = (model, histogram)
        for name, labels in histogram.declared_keys():
            store_of(app).add(name, labels, 0.0)
    return cached[1]


def method_label(method: str) -> str:
    return method if method in _KNOWN_METHODS else "other"


def init_app(app: Flask) -> None:
    # Requests are counted by app.front, around Flask; /score adds its rows itself.
    app.extensions[_EXTENSION_KEY] = MetricStore(app.config.get("METRICS_DIR") or None)
    if app.config.get("PREDICTION_BUCKETS"):
        prediction_histogram.parse_edges(app.config["PREDICTION_BUCKETS"])  # fail at start
