"""Canary analysis benchmark: what judging one canary window costs, against serving.

    .venv/bin/python benchmarks/bench_canary_analysis.py [--seconds 3] [--interval 5]

Trains the sample digits model into a temporary directory and builds the app in this
process (no server, no network). Measures: one `POST /score` (1 row) through the app's
WSGI callable, one `/metrics` render after traffic, and one `canary_analysis.analyse` of
four such texts. Each window costs the servers four scrapes (each version before and after)
and the deploy side one analysis; the target is that this costs under 1% of what serving
does in the same window, i.e. (analysis + 4 scrapes) / (interval) < 1% of one core, shown
also as requests' worth against the requests one core serves in that window. It also times
what the prediction histogram adds to each answer's metrics (`record_predictions` against
the plain row count it replaced), as a share of one request: `wrk` for bench_serving.py is
not on every machine, and this is the only change to the serving hot path.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import create_app, metrics  # noqa: E402
from app.prediction_histogram import PredictionHistogram  # noqa: E402
from modelship import canary_analysis  # noqa: E402
from modelship.sample_model import train_digits_model  # noqa: E402

TARGET_SHARE = 0.01


def per_call(function, seconds: float) -> float:
    """Seconds per call of `function`, timed over about `seconds`."""
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        function()
        calls += 1
    return (time.perf_counter() - started) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="the canary window to compare with (release.canary.interval)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model_dir = train_digits_model(Path(folder), version="1.0.0")
        metadata = json.loads((model_dir / "metadata.json").read_text())
        client = create_app({"MODEL_DIR": str(model_dir)}).test_client()
        logging.disable(logging.CRITICAL)  # the request log would time the terminal
        rows = [metadata["golden"][0]["instance"]]
        for sample in metadata["golden"]:  # every class and a few statuses in the text
            client.post("/score", json={"instances": [sample["instance"]]})
        client.post("/score", json={"instances": [[1.0]]})
        request_seconds = per_call(lambda: client.post("/score", json={"instances": rows}),
                                   options.seconds)
        before = client.get("/metrics").get_data(as_text=True)
        for sample in metadata["golden"]:
            client.post("/score", json={"instances": [sample["instance"]] * 3})
        scrape_seconds = per_call(lambda: client.get("/metrics"), options.seconds)
        after = client.get("/metrics").get_data(as_text=True)
    thresholds = canary_analysis.Thresholds(min_requests=10, max_error_rate_increase=0.01,
                                            max_p99_ratio=1.5, p99_slack_seconds=0.005,
                                            max_drift=0.1)
    analysis_seconds = per_call(
        lambda: canary_analysis.analyse(1, 10, before, after, before, after, thresholds),
        options.seconds)
    window_cost = analysis_seconds + 4 * scrape_seconds
    share = window_cost / options.interval
    served = options.interval / request_seconds
    print(f"POST /score, 1 row, in process: {request_seconds * 1e6:.0f} µs "
          f"({1 / request_seconds:,.0f} req/s on one core)")
    print(f"/metrics render: {scrape_seconds * 1e6:.0f} µs; analysis of one window: "
          f"{analysis_seconds * 1e6:.0f} µs ({len(after)} bytes of metrics per text)")
    print(f"per {options.interval:g} s window: {window_cost * 1e3:.2f} ms = "
          f"{window_cost / request_seconds:.1f} requests' worth of the {served:,.0f} one core "
          f"serves = {share:.4%} (target < {TARGET_SHARE:.0%})")
    store = metrics.MetricStore()
    histogram = PredictionHistogram(classes=metadata["labels"])
    plain = per_call(lambda: store.add(metrics.PREDICTIONS, (), 1), options.seconds)
    counted = per_call(lambda: store.record_predictions(histogram, [3]), options.seconds)
    print(f"metrics per 1-row answer: {plain * 1e6:.2f} µs before, {counted * 1e6:.2f} µs with "
          f"the prediction histogram: +{(counted - plain) / request_seconds:.2%} of a request")
    return 0 if share < TARGET_SHARE else 1


if __name__ == "__main__":
    sys.exit(main())
