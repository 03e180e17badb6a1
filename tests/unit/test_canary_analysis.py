"""The canary analysis on fixed inputs with known outputs (modelship/canary_analysis.py)."""

import math

import pytest

from app import metrics, prediction_histogram
from modelship import canary_analysis as analysis

THRESHOLDS = analysis.Thresholds(min_requests=20, max_error_rate_increase=0.01,
                                 max_p99_ratio=1.5, p99_slack_seconds=0.005, max_drift=0.1)


def figures(requests=100, errors=0, p99=0.004, predictions=None):
    return analysis.Figures(requests, errors, p99, predictions or {"class 1": 50, "class 2": 50})


# --- drift measures ------------------------------------------------------------------


def test_js_distance_of_known_distributions():
    assert analysis.js_distance({"a": 3, "b": 7}, {"a": 30, "b": 70}) == pytest.approx(0)
    assert analysis.js_distance({"a": 5}, {"b": 5}) == pytest.approx(1)
    # P = (1, 0), Q = (1/2, 1/2), M = (3/4, 1/4):
    # JSD = 1/2 log2(4/3) + 1/2 (1/2 log2(2/3) + 1/2 log2(2)) = 0.311278...
    assert analysis.js_distance({"a": 10}, {"a": 5, "b": 5}) == pytest.approx(
        math.sqrt(0.5 * math.log2(4 / 3) + 0.25 * math.log2(2 / 3) + 0.25), rel=1e-12)
    assert analysis.js_distance({"a": 10}, {"a": 5, "b": 5}) == pytest.approx(0.557923, abs=1e-6)


def test_js_distance_agrees_with_scipy():
    distance = pytest.importorskip("scipy.spatial.distance")
    p, q = {"a": 1, "b": 2, "c": 7, "d": 0}, {"a": 4, "b": 4, "c": 1, "d": 1}
    keys = sorted(p)
    assert analysis.js_distance(p, q) == pytest.approx(
        distance.jensenshannon([p[k] for k in keys], [q[k] for k in keys], base=2), rel=1e-9)


def test_psi_smooths_an_empty_bucket_by_half_a_count():
    # p = (10.5, 0.5) / 11, q = (5.5, 5.5) / 11
    p_a, p_b, q = 10.5 / 11, 0.5 / 11, 0.5
    expected = (p_a - q) * math.log(p_a / q) + (p_b - q) * math.log(p_b / q)
    assert analysis.psi({"a": 10}, {"a": 5, "b": 5}) == pytest.approx(expected, rel=1e-12)
    assert analysis.psi({"a": 10}, {"a": 5, "b": 5}) == pytest.approx(1.383873, abs=1e-6)
    assert analysis.psi({"a": 4, "b": 6}, {"a": 4, "b": 6}) == 0


# --- p99 from histogram buckets ------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket_like_histogram_quantile():
    # 100 observations, all between 5 and 10 ms: the 99th is 99% of the way through.
    assert analysis.quantile(0.99, {0.005: 0, 0.01: 100, math.inf: 100}) == \
        pytest.approx(0.00995)
    assert analysis.quantile(0.99, {0.001: 0, 0.005: 50, 0.01: 99, math.inf: 100}) == \
        pytest.approx(0.01)
    # In +Inf: the highest finite bound, as Prometheus answers.
    assert analysis.quantile(0.99, {0.005: 10, 0.01: 10, math.inf: 100}) == 0.01
    assert analysis.quantile(0.99, {0.005: 0, math.inf: 0}) is None


# --- verdicts and their edges ---------------------------------------------------------------


def test_fewer_than_min_requests_on_either_side_is_inconclusive_never_a_pass():
    for canary, stable in ((19, 500), (500, 19), (0, 0)):
        decision = analysis.judge(1, 10, figures(requests=canary), figures(requests=stable),
                                  THRESHOLDS)
        assert decision.verdict == analysis.INCONCLUSIVE, (canary, stable)
        assert "min_requests 20" in decision.reason
    assert analysis.judge(1, 10, figures(requests=20), figures(requests=20),
                          THRESHOLDS).verdict == analysis.PASS


def test_error_rate_increase_at_the_threshold_passes_above_it_fails():
    stable = figures(requests=1000, errors=10)  # 1%
    at = analysis.judge(1, 10, figures(requests=1000, errors=20), stable, THRESHOLDS)
    assert at.verdict == analysis.PASS
    over = analysis.judge(1, 10, figures(requests=1000, errors=21), stable, THRESHOLDS)
    assert over.verdict == analysis.FAIL
    assert over.reason.startswith("errors: canary 2.10% (21/1000) against stable 1.00%")


def test_p99_over_ratio_plus_slack_fails():
    stable = figures(p99=0.010)
    assert analysis.judge(1, 10, figures(p99=0.020), stable, THRESHOLDS).verdict == \
        analysis.PASS  # 10 ms * 1.5 + 5 ms = 20 ms allowed
    slow = analysis.judge(1, 10, figures(p99=0.0201), stable, THRESHOLDS)
    assert slow.verdict == analysis.FAIL and slow.reason.startswith("latency: canary p99 20.1 ms")


def test_drift_over_max_fails_and_names_the_measure():
    shifted = figures(predictions={"class 1": 50, "class 3": 50})
    decision = analysis.judge(2, 25, shifted, figures(), THRESHOLDS)
    assert decision.verdict == analysis.FAIL
    assert decision.reason.startswith("drift: js 0.707")
    assert decision.drift == pytest.approx(math.sqrt(0.5))
    assert decision.drift_floor == pytest.approx(
        math.sqrt(analysis.chi2_99(2) * 0.02 / (8 * math.log(2))))
    psi = analysis.Thresholds(**{**THRESHOLDS.__dict__, "drift_measure": "psi", "max_drift": 0.25})
    assert analysis.judge(2, 25, figures(predictions={"class 1": 52, "class 2": 48}), figures(),
                          psi).verdict == analysis.PASS


def test_the_noise_floor_is_what_chance_gives_two_samples_of_one_distribution():
    assert analysis.chi2_99(9) == pytest.approx(21.666, rel=0.005)  # tables: 21.666
    assert analysis.chi2_99(1) == pytest.approx(6.635, rel=0.05)
    ten = {f"class {k}": 10 for k in range(10)}  # 100 rows on each side, 10 classes
    assert analysis.noise_floor(ten, ten, "js") == pytest.approx(
        math.sqrt(analysis.chi2_99(9) * 0.02 / (8 * math.log(2))))
    assert analysis.noise_floor(ten, ten, "js") == pytest.approx(0.2797, abs=5e-4)
    assert analysis.noise_floor(ten, ten, "psi") == pytest.approx(analysis.chi2_99(9) * 0.02)


def test_same_model_sampling_noise_passes_and_the_floor_shrinks_with_traffic():
    import random

    rng = random.Random(3)
    classes = [f"class {k}" for k in range(10)]

    def sample(rows):
        counts = dict.fromkeys(classes, 0)
        for _ in range(rows):
            counts[rng.choice(classes)] += 1
        return counts

    small = analysis.judge(1, 20, figures(requests=250, predictions=sample(250)),
                           figures(requests=1000, predictions=sample(1000)), THRESHOLDS)
    assert small.verdict == analysis.PASS and small.drift > 0.03  # noise a fixed 0.1 trips
    large = analysis.judge(1, 20, figures(requests=20000, predictions=sample(20000)),
                           figures(requests=20000, predictions=sample(20000)), THRESHOLDS)
    assert large.verdict == analysis.PASS and large.drift_floor < small.drift_floor / 5


def test_errors_are_judged_before_drift():
    decision = analysis.judge(1, 10, figures(errors=50, predictions={"class 9": 50}), figures(),
                              THRESHOLDS)
    assert decision.reason.startswith("errors:")


# --- the app's own /metrics text in, figures out --------------------------------------------


def _app_metrics(requests: list[tuple[str, float]], predictions: list, histogram) -> str:
    store = metrics.MetricStore()
    for name, labels in histogram.declared_keys():
        store.add(name, labels, 0.0)
    for status, seconds in requests:
        store.record_request("POST", "/score", status, seconds)
    store.record_request("GET", "/metrics", "200", 0.001)  # scrapes are not traffic
    store.record_predictions(histogram, predictions)
    return metrics.render(store.totals(), {})


def test_figures_from_the_apps_metrics_over_a_window():
    histogram = prediction_histogram.PredictionHistogram(classes=[0, 1, 2])
    before = _app_metrics([("200", 0.002)] * 10, [1] * 10, histogram)
    after = _app_metrics([("200", 0.002)] * 50 + [("500", 0.003)] * 5 + [("422", 0.001)] * 5,
                         [1] * 40 + [2] * 10 + [7] * 5, histogram)
    window = analysis.window(analysis.parse(before), analysis.parse(after))
    result = analysis.figures(window)
    assert (result.requests, result.errors) == (50, 5)
    assert result.predictions == {"class 0": 0, "class 1": 30, "class 2": 10, "class other": 5}
    assert 0.0025 < result.p99_seconds <= 0.005


def test_regressor_buckets_come_from_the_golden_range_and_round_trip():
    golden = [{"instance": [0], "label": 1.0}, {"instance": [1], "label": 3.0}]
    edges = prediction_histogram.value_edges(golden)
    assert edges[0] == 0.0 and edges[-1] == 4.0 and len(edges) == 11  # range 1..3, widened by 1
    histogram = prediction_histogram.PredictionHistogram(edges=edges)
    text = _app_metrics([], [0.1, 0.1, 3.9, 100.0, None], histogram)
    counts = analysis.figures(analysis.parse(text)).predictions
    assert counts == {**{f"le {edge!r}": 0 for edge in edges},
                      "le 0.4": 2, "le 4.0": 1, "le inf": 1}
    assert "model_nonfinite_predictions_total 1.0" in text


def test_a_restarted_process_counts_from_zero():
    before = {("x", ()): 100.0}
    assert analysis.window(before, {("x", ()): 7.0}) == {("x", ()): 7.0}


def test_parse_reads_escaped_labels_and_refuses_garbage():
    parsed = analysis.parse('# HELP x y\nm{a="q\\"t",b="c\\\\d"} 2.5\nn 1\n')
    assert parsed == {("m", (("a", 'q"t'), ("b", "c\\d"))): 2.5, ("n", ()): 1.0}
    with pytest.raises(ValueError):
        analysis.parse("this is not metrics\n")
