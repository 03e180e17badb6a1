"""What this version predicts, as a histogram a canary analysis can compare with another's.

A canary release asks whether the new version answers the traffic the way the stable one
does; golden samples cannot tell (both pass them). So each process counts its predictions
into fixed buckets: the predicted class for a classifier (the classes the metadata's
`labels` list, or, without it, the first `MAX_CLASSES` distinct ones the model emits; any
other is `other`), or for a regressor the predicted value in `VALUE_BUCKETS` equal-width
buckets spanning the golden samples' label range widened by half of it on each side, plus
one below and one above. A deployment can pin the value edges (`PREDICTION_BUCKETS`, a
comma-separated list), so a canary counts into exactly the stable version's buckets.
Non-finite predictions are counted apart: they are model errors, not a bucket.

Labels come from the model's output or from fixed edges, never from request text. Pure
Python (no Flask, no modelship), shared by the app and `modelship.canary_analysis`: one
definition of the series names.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter

CLASS_SERIES = "model_predicted_class_total"
VALUE_SERIES = "model_predicted_value"  # a histogram: _bucket{le=...}, _count
NONFINITE_SERIES = "model_nonfinite_predictions_total"
OTHER_CLASS = "other"
MAX_CLASSES = 50
VALUE_BUCKETS = 10
INF_LABEL = "+Inf"


def value_edges(golden: list[dict]) -> tuple[float, ...]:
    """Upper bucket edges for a regressor from its golden labels (see the module docstring)."""
    labels = [float(sample["label"]) for sample in golden
              if isinstance(sample.get("label"), (int, float))
              and not isinstance(sample.get("label"), bool)
              and math.isfinite(float(sample["label"]))]
    if not labels:
        low, high = 0.0, 1.0
    else:
        low, high = min(labels), max(labels)
    span = high - low or max(abs(low), 1.0)
    low, high = low - span / 2, high + span / 2
    width = (high - low) / VALUE_BUCKETS
    return tuple(round(low + width * index, 12) for index in range(VALUE_BUCKETS + 1))


def parse_edges(text: str) -> tuple[float, ...]:
    """`PREDICTION_BUCKETS`: increasing finite numbers, comma-separated."""
    try:
        edges = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"PREDICTION_BUCKETS must be comma-separated numbers, got {text!r}") \
            from None
    if len(edges) < 1 or not all(math.isfinite(edge) for edge in edges) or \
            any(later <= earlier for earlier, later in zip(edges, edges[1:])):
        raise ValueError(f"PREDICTION_BUCKETS must be increasing finite numbers, got {text!r}")
    return edges


def edge_label(edge: float) -> str:
    return repr(float(edge))


class PredictionHistogram:
    """Turns one answer's predictions into {(series, labels): count} to add to the metrics."""

    def __init__(self, classes: list | None = None, edges: tuple[float, ...] | None = None):
        self.is_classifier = edges is None
        self._known = None if classes is None else {str(value) for value in classes}
        self.edges = edges
        self._keys: dict = {}  # prediction (class) or bucket index -> its series key
        self._nonfinite_key = (NONFINITE_SERIES, ())

    @classmethod
    def for_model(cls, metadata: dict, by_class: bool,
                  pinned_edges: str = "") -> PredictionHistogram:
        if by_class:
            labels = metadata.get("labels")
            return cls(classes=list(labels) if labels else None)
        edges = parse_edges(pinned_edges) if pinned_edges else \
            value_edges(metadata.get("golden") or [])
        return cls(edges=edges)

    def counts(self, predictions: list) -> dict:
        """{(series name, labels): how many} for one answer's predictions; nothing for a
        model whose rows predict several values (nothing one bucket could hold)."""
        if not predictions or isinstance(predictions[0], list):
            return {}
        if len(predictions) == 1:  # the common answer: no tally to build
            value = predictions[0]
            return {self._class_key(value) if self.is_classifier
                    else self._value_key(self._bucket(value)): 1}
        if self.is_classifier:
            tally = Counter(predictions)
            return {self._class_key(value): count for value, count in tally.items()}
        tally = Counter(self._bucket(value) for value in predictions)
        return {self._value_key(index): count for index, count in tally.items()}

    def declared_keys(self) -> list[tuple]:
        """Every series known before any prediction, so /metrics shows empty buckets too
        (and a canary can be started on the stable version's edges, read from there)."""
        if not self.is_classifier:
            return [self._value_key(index) for index in range(len(self.edges) + 1)]
        return [(CLASS_SERIES, (("class", label),)) for label in sorted(self._known or ())]

    def _class_key(self, value) -> tuple:
        key = self._keys.get(value)
        if key is None:
            label = str(value)
            if value is None or (self._known is not None and label not in self._known) or \
                    (self._known is None and len(self._keys) >= MAX_CLASSES):
                label = OTHER_CLASS
            key = (CLASS_SERIES, (("class", label),))
            if len(self._keys) < MAX_CLASSES or label != OTHER_CLASS:
                self._keys[value] = key
        return key

    def _bucket(self, value) -> int:
        # /score's answer holds null for a non-finite prediction; v2's arrays hold NaN or inf.
        if value is None or not math.isfinite(value):
            return -1
        return bisect_left(self.edges, value)

    def _value_key(self, index: int) -> tuple:
        key = self._keys.get(index)
        if key is None:
            if index < 0:
                key = self._nonfinite_key
            else:
                bound = edge_label(self.edges[index]) if index < len(self.edges) else INF_LABEL
                key = (VALUE_SERIES + "_bucket", (("le", bound),))
            self._keys[index] = key
        return key
