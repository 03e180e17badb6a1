"""The canary loop with a fake runtime (modelship/canary.py): what it decides and does."""

import pytest

from app import metrics, prediction_histogram
from modelship import canary
from modelship.settings_schema import CanarySection

SECTION = CanarySection(steps=[10, 50, 100], interval="1s", min_requests=10,
                        max_inconclusive=1)


class FakeRuntime:
    """Two versions' counters; each window (sleep) adds `traffic(share)` to them."""

    def __init__(self, canary_classes, canary_status="200", per_window=100):
        self.histogram = prediction_histogram.PredictionHistogram(classes=[1, 2])
        self.stores = {"canary": metrics.MetricStore(), "stable": metrics.MetricStore()}
        self.canary_classes, self.canary_status = canary_classes, canary_status
        self.per_window, self.share, self.calls = per_window, 0, []

    def window(self, seconds):
        canary_rows = self.per_window * self.share // 100
        for name, rows, classes, status in (
                ("canary", canary_rows, self.canary_classes, self.canary_status),
                ("stable", self.per_window - canary_rows, [1, 2], "200")):
            for index in range(rows):
                self.stores[name].record_request("POST", "/score", status, 0.002)
                self.stores[name].record_predictions(self.histogram,
                                                     [classes[index % len(classes)]])

    def set_share(self, percent):
        self.share = percent
        self.calls.append(("share", percent))

    def scrape(self):
        return tuple(metrics.render(self.stores[name].totals(), {})
                     for name in ("canary", "stable"))

    def promote(self):
        self.calls.append("promote")

    def roll_back(self):
        self.calls.append("roll back")


def run(runtime, section=SECTION):
    lines = []
    result = canary.run(runtime, section, lines.append, sleep=runtime.window)
    return result, lines


def test_a_canary_that_agrees_is_promoted_through_every_step():
    runtime = FakeRuntime([1, 2])
    result, lines = run(runtime)
    assert result.promoted
    assert runtime.calls == [("share", 10), ("share", 50), "promote"]
    assert [d.verdict for d in result.decisions] == ["pass", "pass"]
    assert lines[0].strip().startswith("step share") and "pass" in lines[1]


def test_shifted_predictions_roll_back_on_drift_at_the_first_step():
    runtime = FakeRuntime([2])
    result, lines = run(runtime)
    assert not result.promoted and runtime.calls == [("share", 10), "roll back"]
    assert "failed on drift: js" in result.reason


def test_errors_roll_back():
    result, _ = run(FakeRuntime([1, 2], canary_status="500"))
    assert "failed on errors: canary 100.00%" in result.reason


def test_no_traffic_is_inconclusive_held_then_rolled_back_never_promoted():
    runtime = FakeRuntime([1, 2], per_window=0)
    result, lines = run(runtime)
    assert runtime.calls == [("share", 10), "roll back"]
    assert [d.verdict for d in result.decisions] == ["inconclusive", "inconclusive"]
    assert "no evidence, no promotion" in result.reason


def test_an_interrupt_rolls_back_and_is_passed_on_with_the_decisions():
    runtime = FakeRuntime([1, 2])
    real_window = runtime.window

    def interrupted(seconds):
        if ("share", 50) in runtime.calls:
            raise KeyboardInterrupt
        real_window(seconds)

    with pytest.raises(KeyboardInterrupt) as caught:
        canary.run(runtime, SECTION, lambda line: None, sleep=interrupted)
    assert runtime.calls[-1] == "roll back" and "promote" not in runtime.calls
    assert caught.value.canary_result.reason == "interrupted"
    assert len(caught.value.canary_result.decisions) == 1


def test_the_plan_names_every_judged_share():
    assert canary.plan(SECTION).startswith("shares 10%, 50% for 1s each")
