"""The one comparison between what a model was published to predict and what it predicts.

Golden samples travel in the model's metadata as `{"instance": [...], "label": ...}` (the
label is the expected prediction: a class for a classifier, a number for a regressor) with
optional `"probabilities": [...]`. Publishing, the app's readiness replay, the container
contract test and the post-rollout smoke test all judge them here, so a model that passes
one passes all. Labels (integers, strings) must be equal; numbers that went through float32
(regression outputs, probabilities) must agree within the metadata's `tolerance`. Pure
Python: the serving image imports it, so it must never import Flask or modelship.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

# float32 keeps about 7 significant figures: exported and served values differ in the 7th.
DEFAULT_RELATIVE = 1e-4
DEFAULT_ABSOLUTE = 1e-6


@dataclass(frozen=True)
class Tolerance:
    rel: float = DEFAULT_RELATIVE
    abs: float = DEFAULT_ABSOLUTE

    @classmethod
    def of(cls, metadata: dict) -> Tolerance:
        """The tolerance a model's metadata records; the defaults when it records none."""
        given = metadata.get("tolerance") or {}
        return cls(float(given.get("rel", DEFAULT_RELATIVE)),
                   float(given.get("abs", DEFAULT_ABSOLUTE)))

    def __str__(self) -> str:
        return f"rel {self.rel:g}, abs {self.abs:g}"


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def same_value(expected, predicted, tolerance: Tolerance) -> bool:
    """Equal labels; or numbers within tolerance once either side is a float."""
    if _is_number(expected) and _is_number(predicted):
        if isinstance(expected, Integral) and isinstance(predicted, Integral):
            return expected == predicted  # class ids: 10000 and 10001 are different classes
        return math.isclose(float(expected), float(predicted),
                            rel_tol=tolerance.rel, abs_tol=tolerance.abs)
    return expected == predicted


def first_mismatch(golden: list[dict], answer: dict, tolerance: Tolerance) -> str | None:
    """Why the first golden sample fails, or None when `answer` matches every sample.

    `answer` is what `/score` returns for the golden instances in order: `predictions`, and
    `probabilities` for a classifier.
    """
    predictions = answer.get("predictions") or []
    if len(predictions) != len(golden):
        return f"{len(golden)} golden samples, but {len(predictions)} predictions came back"
    probabilities = answer.get("probabilities")
    for index, (sample, predicted) in enumerate(zip(golden, predictions)):
        expected = sample.get("label")
        if not same_value(expected, predicted, tolerance):
            return (f"golden sample {index}: expected {expected!r}, the model predicted "
                    f"{predicted!r} (tolerance {tolerance})")
        wanted = sample.get("probabilities")
        if wanted is None or probabilities is None:
            continue
        got = probabilities[index]
        if len(got) != len(wanted) or not all(
            same_value(w, g, tolerance) for w, g in zip(wanted, got)
        ):
            return (f"golden sample {index}: expected probabilities {wanted!r}, the model gave "
                    f"{got!r} (tolerance {tolerance})")
    return None
