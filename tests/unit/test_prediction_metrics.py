"""The app's per-version prediction histogram in /metrics (app/prediction_histogram.py)."""

import pytest

from modelship import canary_analysis as analysis


def _predictions(client) -> dict:
    return analysis.figures(analysis.parse(client.get("/metrics").get_data(as_text=True))) \
        .predictions


def test_a_classifier_counts_the_classes_it_predicted(client, sample_metadata):
    before = _predictions(client)
    assert set(before) == {f"class {label}" for label in sample_metadata["labels"]}
    assert sum(before.values()) == 0
    rows = [sample["instance"] for sample in sample_metadata["golden"]]
    assert client.post("/score", json={"instances": rows}).status_code == 200
    after = _predictions(client)
    for sample in sample_metadata["golden"]:
        assert after[f"class {sample['label']}"] >= 1
    assert sum(after.values()) == len(rows)


def test_v2_infer_counts_into_the_same_histogram(client, sample_metadata):
    row = sample_metadata["golden"][0]
    body = {"inputs": [{"name": "input", "shape": [1, len(row["instance"])],
                        "datatype": "FP32", "data": row["instance"]}]}
    name = sample_metadata["name"]
    answer = client.post(f"/v2/models/{name}/infer", json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert _predictions(client)[f"class {row['label']}"] == 1


def test_a_regressor_counts_values_in_buckets_from_its_golden_range(make_app,
                                                                    regressor_model_dir):
    client = make_app(MODEL_DIR=str(regressor_model_dir)).test_client()
    empty = _predictions(client)
    assert len(empty) == 12 and sum(empty.values()) == 0  # 11 edges and +Inf
    client.post("/score", json={"instances": [[0, 0, 1], [100, 100, 100]]})
    counts = _predictions(client)
    assert counts["le inf"] == 1 and sum(counts.values()) == 2


def test_pinned_buckets_replace_the_golden_ones(make_app, regressor_model_dir):
    client = make_app(MODEL_DIR=str(regressor_model_dir),
                      PREDICTION_BUCKETS="0,5,10").test_client()
    client.post("/score", json={"instances": [[0, 0, 1]]})  # predicts 1.0
    assert _predictions(client) == {"le 0.0": 0, "le 5.0": 1, "le 10.0": 0, "le inf": 0}


def test_malformed_pinned_buckets_stop_the_app_at_start(make_app, regressor_model_dir):
    with pytest.raises(ValueError, match="PREDICTION_BUCKETS"):
        make_app(MODEL_DIR=str(regressor_model_dir), PREDICTION_BUCKETS="5,1")
