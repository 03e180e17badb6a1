"""The canary's judgement: two versions' /metrics over one window in, one verdict out.

A canary step is judged on evidence from the same window for both versions: each version's
`/metrics` (Prometheus text, counters only) is read before and after the window, and the
differences are what each version served in it. From those deltas: requests and errors
(5xx answers plus predictions the model returned as NaN or infinity) on the scoring routes,
the p99 latency from the duration histogram's buckets, and the distance between the two
versions' prediction histograms (`app.prediction_histogram`).

Drift is the Jensen-Shannon distance (base 2), `sqrt(JSD(P, Q))` with
`JSD = 1/2 KL(P || M) + 1/2 KL(Q || M)`, `M = (P + Q) / 2`: symmetric, between 0 (same
distribution) and 1 (disjoint), and defined when a bucket is empty on one side, which a
short window makes common. PSI (`sum (p - q) ln(p / q)`) is offered too (`drift_measure:
psi`) for teams with PSI thresholds; it is infinite on an empty bucket, so every bucket is
smoothed first by adding `PSI_SMOOTHING` (0.5 of a count) to both sides.

Two samples of one distribution are never exactly alike: with k buckets and n and m rows,
`8 JSD / (1/n + 1/m)` (JSD in nats) is about chi-squared with k - 1 degrees of freedom,
so same-model windows of a few hundred rows measure a JS distance near 0.09. A fixed
threshold would fail good canaries on small windows and miss bad ones on large ones, so
`max_drift` is the drift allowed *beyond chance*: a window fails when the distance exceeds
`max_drift` plus the distance two samples of these sizes exceed by chance only 1% of the
time (the chi-squared 99th percentile, by the Wilson-Hilferty approximation). PSI is twice
the symmetric KL's second-order term, so its floor is `chi2 (1/n + 1/m)`. The drift compares
the distributions of the answers, not answer by answer: a model that swaps two classes as
often as it confuses them the other way leaves the histogram unchanged.

Too little traffic is never evidence: a window with fewer than `min_requests` on either side
is inconclusive, whatever the figures. Pure code: no network, clock or settings file.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

from app import prediction_histogram as histogram_names
from app.metric_names import LATENCY, REQUESTS, SCORING_ROUTES

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
PSI_SMOOTHING = 0.5
DRIFT_MEASURES = ("js", "psi")

# name{labels} value: the subset of the text format the app writes (no timestamps needed).
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Series = dict  # {(name, ((label, value), ...)): float}


def parse(text: str) -> Series:
    """The samples of a Prometheus text exposition: {(name, sorted labels): value}."""
    samples = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"not a Prometheus sample line: {line[:120]!r}")
        name, _, raw_labels, value = match.group(1, 2, 3, 4)
        labels = tuple(sorted(
            (key, re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], text))
            for key, text in _LABEL.findall(raw_labels or "")))
        samples[(name, labels)] = float(value)
    return samples


def window(before: Series, after: Series) -> Series:
    """What was counted between two snapshots. A series that fell (the process restarted)
    counts from zero, as Prometheus's increase() does."""
    delta = {}
    for key, value in after.items():
        earlier = before.get(key, 0.0)
        delta[key] = value - earlier if value >= earlier else value
    return delta


@dataclass(frozen=True)
class Figures:
    """What one version served in a window."""
    requests: float
    errors: float
    p99_seconds: float | None
    predictions: dict  # bucket label -> rows

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def _labels(key) -> dict:
    return dict(key[1])


def figures(delta: Series) -> Figures:
    """Requests, errors, p99 and prediction histogram of one version's window."""
    requests = errors = 0.0
    buckets = defaultdict(float)
    for key, value in delta.items():
        name, labels = key[0], _labels(key)
        if labels.get("route") not in SCORING_ROUTES:
            continue
        if name == REQUESTS:
            requests += value
            if labels.get("status", "").startswith("5"):
                errors += value
        elif name == LATENCY + "_bucket":
            buckets[float(labels["le"])] += value
    errors += sum(value for key, value in delta.items()
                  if key[0] == histogram_names.NONFINITE_SERIES)
    return Figures(requests, errors, quantile(0.99, buckets), prediction_counts(delta))


def quantile(q: float, cumulative: dict) -> float | None:
    """The q-quantile of a cumulative histogram {upper bound: count}, interpolated linearly
    inside its bucket as Prometheus's histogram_quantile does; the highest finite bound when
    it falls in +Inf; None without observations."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / \
                (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def prediction_counts(delta: Series) -> dict:
    """{bucket: rows} from the class counter or the (cumulative) value histogram."""
    classes = {_labels(key)["class"]: value for key, value in delta.items()
               if key[0] == histogram_names.CLASS_SERIES}
    if classes:
        return {f"class {label}": value for label, value in classes.items()}
    cumulative = {float(_labels(key)["le"]): value for key, value in delta.items()
                  if key[0] == histogram_names.VALUE_SERIES + "_bucket"}
    counts, below = {}, 0.0
    for bound in sorted(cumulative):
        counts[f"le {bound!r}"] = cumulative[bound] - below
        below = cumulative[bound]
    return counts


def _distributions(p: dict, q: dict, smoothing: float = 0.0) -> tuple[list, list]:
    keys = sorted(set(p) | set(q))
    p_values = [p.get(key, 0.0) + smoothing for key in keys]
    q_values = [q.get(key, 0.0) + smoothing for key in keys]
    p_total, q_total = sum(p_values), sum(q_values)
    return [v / p_total for v in p_values], [v / q_total for v in q_values]


def js_distance(p: dict, q: dict) -> float:
    """Jensen-Shannon distance (base 2) between two histograms of counts: 0 to 1."""
    p_share, q_share = _distributions(p, q)

    def kl_to_mean(a, b):
        return sum(x * math.log2(2 * x / (x + y)) for x, y in zip(a, b) if x > 0)

    divergence = (kl_to_mean(p_share, q_share) + kl_to_mean(q_share, p_share)) / 2
    return math.sqrt(max(divergence, 0.0))


def psi(p: dict, q: dict) -> float:
    """Population stability index, every bucket smoothed by PSI_SMOOTHING counts."""
    p_share, q_share = _distributions(p, q, PSI_SMOOTHING)
    return sum((x - y) * math.log(x / y) for x, y in zip(p_share, q_share))


_Z_99 = 2.326348  # the standard normal's 99th percentile


def chi2_99(degrees: int) -> float:
    """Chi-squared's 99th percentile (Wilson-Hilferty; within 0.5% from 3 degrees up)."""
    degrees = max(degrees, 1)
    third = 2 / (9 * degrees)
    return degrees * (1 - third + _Z_99 * math.sqrt(third)) ** 3


def noise_floor(canary: dict, stable: dict, measure: str) -> float:
    """The drift two samples of these sizes from one distribution exceed 1% of the time."""
    buckets = sum(1 for key in set(canary) | set(stable)
                  if canary.get(key, 0) or stable.get(key, 0))
    inverse_sizes = 1 / sum(canary.values()) + 1 / sum(stable.values())
    chi2 = chi2_99(buckets - 1)
    if measure == "psi":
        return chi2 * inverse_sizes
    return math.sqrt(chi2 * inverse_sizes / (8 * math.log(2)))


@dataclass(frozen=True)
class Thresholds:
    """The analysis settings (release.canary), as the analysis needs them."""
    min_requests: int
    max_error_rate_increase: float
    max_p99_ratio: float
    p99_slack_seconds: float
    max_drift: float
    drift_measure: str = "js"


@dataclass(frozen=True)
class Decision:
    """One step's verdict and the figures behind it (a row of the decision table)."""
    step: int
    share: int
    canary: Figures
    stable: Figures
    drift: float | None
    verdict: str
    reason: str
    drift_floor: float | None = None

    def as_record(self) -> dict:
        def side(figures: Figures) -> dict:
            return {"requests": int(figures.requests), "errors": int(figures.errors),
                    "p99_ms": None if figures.p99_seconds is None
                    else round(figures.p99_seconds * 1000, 3)}
        return {"step": self.step, "share": self.share, "canary": side(self.canary),
                "stable": side(self.stable),
                "drift": None if self.drift is None else round(self.drift, 6),
                "drift_floor": None if self.drift_floor is None else round(self.drift_floor, 6),
                "verdict": self.verdict, "reason": self.reason}


def judge(step: int, share: int, canary: Figures, stable: Figures,
          thresholds: Thresholds) -> Decision:
    """The verdict on one window: inconclusive without enough traffic on both sides, fail on
    the first check over its threshold (errors, then latency, then drift), else pass."""
    def decided(verdict, reason, drift=None, floor=None):
        return Decision(step, share, canary, stable, drift, verdict, reason, floor)

    least = min(canary.requests, stable.requests)
    if least < thresholds.min_requests:
        side = "canary" if canary.requests <= stable.requests else "stable"
        return decided(INCONCLUSIVE, f"{side} served {int(least)} requests in the window, "
                                     f"fewer than min_requests {thresholds.min_requests}")
    increase = canary.error_rate - stable.error_rate
    if increase > thresholds.max_error_rate_increase:
        return decided(FAIL, f"errors: canary {canary.error_rate:.2%} "
                             f"({int(canary.errors)}/{int(canary.requests)}) against stable "
                             f"{stable.error_rate:.2%}, more than "
                             f"max_error_rate_increase {thresholds.max_error_rate_increase:.2%}")
    if canary.p99_seconds is not None and stable.p99_seconds is not None:
        allowed = stable.p99_seconds * thresholds.max_p99_ratio + thresholds.p99_slack_seconds
        if canary.p99_seconds > allowed:
            return decided(FAIL, f"latency: canary p99 {canary.p99_seconds * 1000:.1f} ms "
                                 f"against stable {stable.p99_seconds * 1000:.1f} ms, over "
                                 f"{allowed * 1000:.1f} ms (max_p99_ratio "
                                 f"{thresholds.max_p99_ratio:g} + p99_slack)")
    measure = thresholds.drift_measure
    drift = drift_between(canary.predictions, stable.predictions, measure)
    if drift is None:
        return decided(PASS, "within every threshold (no predictions to compare)")
    floor = noise_floor(canary.predictions, stable.predictions, measure)
    if drift > thresholds.max_drift + floor:
        return decided(FAIL, f"drift: {measure} {drift:.3f} between the canary's and the "
                             f"stable version's predictions, over max_drift "
                             f"{thresholds.max_drift:g} + {floor:.3f} that chance explains at "
                             "these window sizes", drift, floor)
    return decided(PASS, "within every threshold", drift, floor)


def drift_between(canary: dict, stable: dict, measure: str) -> float | None:
    """The configured distance, None when either side predicted nothing it could bucket."""
    if not sum(canary.values()) or not sum(stable.values()):
        return None
    if measure == "psi":
        return psi(canary, stable)
    return js_distance(canary, stable)


def analyse(step: int, share: int, canary_before: str, canary_after: str,
            stable_before: str, stable_after: str, thresholds: Thresholds) -> Decision:
    """`judge` on four /metrics texts: each version before and after the window."""
    canary = figures(window(parse(canary_before), parse(canary_after)))
    stable = figures(window(parse(stable_before), parse(stable_after)))
    return judge(step, share, canary, stable, thresholds)


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def merged(texts: list[str]) -> str:
    """One exposition whose every series is the sum of that series over `texts`: what a
    version served over all its pods (on Kubernetes each pod has its own /metrics). Counters
    and cumulative buckets add up; the window's figures then belong to the version."""
    total: Series = defaultdict(float)
    for text in texts:
        for key, value in parse(text).items():
            total[key] += value
    lines = []
    for (name, labels), value in sorted(total.items()):
        inner = ",".join(f'{key}="{_escaped(text)}"' for key, text in labels)
        lines.append(f"{name}{{{inner}}} {value!r}" if inner else f"{name} {value!r}")
    return "\n".join(lines) + ("\n" if lines else "")
