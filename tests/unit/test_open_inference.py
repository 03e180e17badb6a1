"""The Open Inference Protocol (v2) REST API beside /score: health, metadata, readiness and
infer for a classifier, a regressor and a model of every datatype, errors in the protocol's
shape, and the same guarantees as /score (API key, size limit, metrics, request log)."""

import json
import logging

import numpy as np
import pytest

from app.errors import ApiError
from app.model import InputSpec
from app.open_inference import DATATYPE_DTYPES, parse_request, plain_request

KEY = "v2-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def v2(make_app):
    return make_app(API_KEY=KEY).test_client()


@pytest.fixture
def golden(sample_metadata):
    return sample_metadata["golden"]


def infer_body(rows, name="input", datatype="FP32", **extra):
    return {"inputs": [{"name": name, "shape": [len(rows), len(rows[0])], "datatype": datatype,
                        "data": rows}], **extra}


def outputs_by_name(answer: dict) -> dict:
    return {output["name"]: output for output in answer["outputs"]}


# --- server and model metadata, health, readiness ------------------------------------


def test_server_metadata_and_health_need_no_key(v2):
    assert v2.get("/v2").get_json() == {"name": "modelship", "version": "unknown",
                                        "extensions": []}
    assert v2.get("/v2/health/live").get_json() == {"live": True}
    ready = v2.get("/v2/health/ready")
    assert (ready.status_code, ready.get_json()) == (200, {"ready": True})


def test_server_is_not_ready_while_draining_or_without_a_model(make_app, tmp_path):
    marker = tmp_path / "shutting-down"
    marker.touch()
    draining = make_app(SHUTDOWN_MARKER=str(marker)).test_client().get("/v2/health/ready")
    assert (draining.status_code, draining.get_json()) == (400, {"ready": False})

    unloaded = make_app(MODEL_DIR=str(tmp_path / "nothing")).test_client()
    assert unloaded.get("/v2/health/ready").status_code == 400
    assert unloaded.get("/v2/health/live").status_code == 200
    assert unloaded.get("/v2/models/any/ready").get_json() == {"name": "any", "ready": False}
    infer = unloaded.post("/v2/models/any/infer", json=infer_body([[0.0]]))
    assert infer.status_code == 503 and isinstance(infer.get_json()["error"], str)


def test_classifier_metadata_comes_from_the_onnx_signature(v2, sample_model_version):
    for url in ("/v2/models/digits", f"/v2/models/digits/versions/{sample_model_version}"):
        metadata = v2.get(url).get_json()
        assert metadata == {
            "name": "digits",
            "versions": [sample_model_version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        }
    ready = v2.get(f"/v2/models/digits/versions/{sample_model_version}/ready")
    assert (ready.status_code, ready.get_json()) == (200, {"name": "digits", "ready": True})


def test_regressor_metadata_and_infer_match_score(make_app, regressor_model_dir):
    client = make_app(MODEL_DIR=str(regressor_model_dir)).test_client()
    metadata = client.get("/v2/models/line").get_json()
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert metadata["outputs"] == [{"name": "variable", "datatype": "FP32", "shape": [-1, 1]}]
    rows = [[0, 0, 1], [1, 2, 0], [3.5, -1, 1e3]]

    answer = client.post("/v2/models/line/infer", json=infer_body(rows, name="x")).get_json()
    score = client.post("/score", json={"instances": rows}).get_json()

    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("variable", "FP32", [3, 1])
    assert np.array_equal(np.float32(output["data"]), np.float32(score["predictions"]))
    assert (answer["model_name"], answer["model_version"]) == ("line", "0.1")


@pytest.mark.parametrize("url", [
    "/v2/models/other", "/v2/models/digits/versions/0.0.0", "/v2/models/other/ready",
    "/v2/models/digits/versions/0.0.0/ready",
])
def test_a_model_or_version_not_served_is_a_404(v2, url):
    response = v2.get(url)
    assert response.status_code == 404
    assert isinstance(response.get_json()["error"], str)


@pytest.mark.parametrize("url", ["/v2/models/other/infer", "/v2/models/digits/versions/0/infer"])
def test_infer_on_a_model_or_version_not_served_is_a_404(v2, golden, url):
    response = v2.post(url, json=infer_body([golden[0]["instance"]]), headers=AUTH)
    assert response.status_code == 404
    assert "this server serves" in response.get_json()["error"]


def test_unknown_v2_paths_and_wrong_methods_answer_in_the_protocols_shape(v2):
    missing = v2.get("/v2/nothing/here")
    assert missing.status_code == 404 and "Open Inference" in missing.get_json()["error"]
    wrong_method = v2.get("/v2/models/digits/infer")
    assert wrong_method.status_code == 405 and "POST" in wrong_method.get_json()["error"]
    # /score and the rest keep their own shape.
    assert set(v2.get("/nothing").get_json()["error"]) == {"code", "message"}


# --- infer: answers equal to /score's ------------------------------------------------


@pytest.mark.parametrize("flat", [False, True])
def test_classifier_infer_equals_score(v2, golden, sample_model_version, flat):
    rows = [sample["instance"] for sample in golden[:5]]
    body = infer_body(rows, id="call-7")
    if flat:
        body["inputs"][0]["data"] = [value for row in rows for value in row]

    response = v2.post(f"/v2/models/digits/versions/{sample_model_version}/infer", json=body,
                       headers=AUTH)
    score = v2.post("/score", json={"instances": rows}, headers=AUTH).get_json()

    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (
        "digits", sample_model_version, "call-7")
    outputs = outputs_by_name(answer)
    assert outputs["label"] == {"name": "label", "datatype": "INT64", "shape": [5],
                                "data": score["predictions"]}
    probabilities = outputs["probabilities"]
    assert (probabilities["datatype"], probabilities["shape"]) == ("FP32", [5, 10])
    # FP32 on the wire: the same float32 values /score writes as doubles.
    assert np.array_equal(np.float32(probabilities["data"]).reshape(5, 10),
                          np.float32(score["probabilities"]))
    assert [sample["label"] for sample in golden[:5]] == outputs["label"]["data"]


def test_requested_outputs_only_and_the_request_id_by_default(v2, golden):
    response = v2.post("/v2/models/digits/infer", headers={**AUTH, "X-Request-ID": "trace-1"},
                       json=infer_body([golden[0]["instance"]],
                                       outputs=[{"name": "label", "parameters": {}}]))
    answer = response.get_json()
    assert [output["name"] for output in answer["outputs"]] == ["label"]
    assert answer["id"] == "trace-1" == response.headers["X-Request-ID"]


def test_fields_the_protocol_does_not_name_are_ignored(v2, golden):
    body = infer_body([golden[0]["instance"]], model_name="digits")
    body["inputs"][0]["extra"] = [1]
    response = v2.post("/v2/models/digits/infer", json=body, headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)


def test_a_body_without_content_type_is_read_as_json(v2, golden):
    data = json.dumps(infer_body([golden[0]["instance"]]))
    response = v2.post("/v2/models/digits/infer", data=data, headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)


# --- infer: what a client can get wrong ----------------------------------------------

ROW = [0.0] * 64


@pytest.mark.parametrize("body, says", [
    ([], '"inputs" list'),
    ({"instances": [ROW]}, '"inputs" list'),
    ({"inputs": []}, "exactly one tensor"),
    ({"inputs": [ROW]}, "must be an object"),
    ({"inputs": [{"name": "input"}]}, "lacks shape, datatype, data"),
    (infer_body([ROW], name="other"), "its input is 'input'"),
    (infer_body([ROW], datatype="FP64"), "datatype is FP64; this model takes FP32"),
    (infer_body([ROW], datatype="BYTES"), "BYTES (strings) is only for models that take strings"),
    (infer_body([ROW], datatype="fp32"), "datatype must be one of"),
    ({"inputs": [{"name": "input", "shape": [64], "datatype": "FP32", "data": ROW}]},
     "shape must be [rows, 64]"),
    ({"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": ROW}]},
     "63 features"),
    ({"inputs": [{"name": "input", "shape": [0, 64], "datatype": "FP32", "data": []}]}, "no rows"),
    ({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": ROW}]},
     "64 values; the shape asks for 128"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [ROW[:32]] * 2}]},
     "nested but not as the shape"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                  "data": [[0.0]] + ROW[1:]}]},
     "flat, or nested exactly"),
    (infer_body([[True] + ROW[1:]]), "data[0] is a boolean; expected a number"),
    (infer_body([ROW[:3] + ["1"] + ROW[4:]]), "data[3] is a string"),
    (infer_body([ROW[:63] + [1e39]]), "data[63] does not fit in FP32"),
    (infer_body([ROW], id=7), '"id" must be a string'),
    (infer_body([ROW], outputs=[{"name": "nope"}]), "its outputs are 'label', 'probabilities'"),
    (infer_body([ROW], outputs="label"), '"outputs" must be a list'),
])
def test_a_bad_request_is_a_400_saying_what_is_wrong(v2, body, says):
    response = v2.post("/v2/models/digits/infer", json=body, headers=AUTH)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert says in response.get_json()["error"]


def test_nan_and_malformed_json_are_400s(v2):
    nan = json.dumps(infer_body([[float("nan")] + ROW[1:]]))
    response = v2.post("/v2/models/digits/infer", data=nan, headers=AUTH,
                       content_type="application/json")
    assert "NaN or infinite" in response.get_json()["error"]
    broken = v2.post("/v2/models/digits/infer", data=b"{", headers=AUTH,
                     content_type="application/json")
    assert broken.status_code == 400 and '"inputs"' in broken.get_json()["error"]


def test_key_size_limit_and_content_type_are_those_of_score(make_app, golden):
    client = make_app(API_KEY=KEY, MAX_CONTENT_LENGTH=2000).test_client()
    body = infer_body([golden[0]["instance"]])

    missing = client.post("/v2/models/digits/infer", json=body)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert isinstance(missing.get_json()["error"], str)
    wrong = client.post("/v2/models/digits/infer", json=body, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401
    too_large = client.post("/v2/models/digits/infer", json=infer_body([ROW] * 20), headers=AUTH)
    assert too_large.status_code == 413 and "limit of 2000 bytes" in too_large.get_json()["error"]
    text = client.post("/v2/models/digits/infer", data=json.dumps(body), headers=AUTH,
                       content_type="text/plain")
    assert text.status_code == 415
    batch = make_app(MAX_BATCH=2).test_client().post(
        "/v2/models/digits/infer", json=infer_body([ROW] * 3))
    assert batch.status_code == 400 and "at most 2" in batch.get_json()["error"]


def test_infer_is_counted_and_logged_by_its_route_not_its_url(v2, golden, caplog):
    caplog.set_level(logging.INFO, logger="app.request_log")
    rows = [sample["instance"] for sample in golden[:3]]
    v2.post("/v2/models/digits/infer", json=infer_body(rows), headers=AUTH)
    v2.post("/v2/models/digits/versions/1.2.3/infer", json=infer_body(rows[:1]), headers=AUTH)
    v2.post("/v2/models/unknown-name/infer", json=infer_body(rows), headers=AUTH)
    v2.get("/v2/models/digits")

    text = v2.get("/metrics").get_data(as_text=True)
    assert ('http_requests_total{method="POST",route="/v2/models/<model_name>/infer",'
            'status="200"} 1.0') in text
    assert ('http_requests_total{method="POST",route='
            '"/v2/models/<model_name>/versions/<model_version>/infer",status="200"} 1.0') in text
    assert 'route="/v2/models/<model_name>/infer",status="404"} 1.0' in text
    assert 'route="/v2/models/<model_name>",status="200"} 1.0' in text
    assert "model_predictions_total 4.0" in text
    assert "unknown-name" not in text
    routes = [record.fields["route"] for record in caplog.records if hasattr(record, "fields")]
    assert routes[:3] == ["/v2/models/<model_name>/infer",
                          "/v2/models/<model_name>/versions/<model_version>/infer",
                          "/v2/models/<model_name>/infer"]
    assert "unknown-name" not in caplog.text and "0.0" not in caplog.text


# --- every datatype the protocol names -----------------------------------------------

ONNX_TYPES = {
    "BOOL": "BOOL", "UINT8": "UINT8", "UINT16": "UINT16", "UINT32": "UINT32",
    "UINT64": "UINT64", "INT8": "INT8", "INT16": "INT16", "INT32": "INT32", "INT64": "INT64",
    "FP16": "FLOAT16", "FP32": "FLOAT", "FP64": "DOUBLE", "BYTES": "STRING",
}
SAMPLE_VALUES = {"BOOL": [True, False, True], "BYTES": ["a", "", "ünï"]}


def identity_model_dir(tmp_path, datatype: str):
    """A model whose one output is its [batch, 3] input, of the given protocol datatype."""
    import onnx
    from onnx import TensorProto, helper

    element_type = getattr(TensorProto, ONNX_TYPES[datatype])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", element_type, ["batch", 3])],
        [helper.make_tensor_value_info("y", element_type, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder = tmp_path / datatype
    folder.mkdir()
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    (folder / "metadata.json").write_text(json.dumps({"name": "echo", "version": "1"}))
    return folder


@pytest.mark.parametrize("datatype", sorted(ONNX_TYPES))
def test_every_datatype_is_taken_and_answered_in_kind(make_app, tmp_path, datatype):
    client = make_app(MODEL_DIR=str(identity_model_dir(tmp_path, datatype))).test_client()
    metadata = client.get("/v2/models/echo").get_json()
    assert metadata["inputs"] == [{"name": "x", "datatype": datatype, "shape": [-1, 3]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": datatype, "shape": [-1, 3]}]
    values = SAMPLE_VALUES.get(datatype, [1, 0, 7] if datatype[0] in "IU" else [1.5, -0.25, 7])
    dtype = DATATYPE_DTYPES[datatype]

    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": datatype, "data": values}]}
    response = client.post("/v2/models/echo/infer", json=body)

    assert response.status_code == 200, response.get_data(as_text=True)
    (output,) = response.get_json()["outputs"]
    assert (output["datatype"], output["shape"]) == (datatype, [1, 3])
    assert np.array_equal(np.array(output["data"], dtype=dtype), np.array(values, dtype=dtype))
    other = "FP64" if datatype != "FP64" else "FP32"
    body["inputs"][0]["datatype"] = other
    refused = client.post("/v2/models/echo/infer", json=body)
    assert refused.status_code == 400
    assert f"this model takes {datatype}" in refused.get_json()["error"]


@pytest.mark.parametrize("datatype, value, says", [
    ("UINT8", 256, "does not fit in UINT8"),
    ("UINT64", -1, "does not fit in UINT64"),
    ("INT8", -129, "does not fit in INT8"),
    ("INT64", 1.5, "expected a whole number"),
    ("INT32", True, "expected a whole number"),
    ("BOOL", 1, "expected true or false"),
    ("FP16", 70000, "does not fit in FP16"),
])
def test_values_outside_a_datatype_are_400s(make_app, tmp_path, datatype, value, says):
    client = make_app(MODEL_DIR=str(identity_model_dir(tmp_path, datatype))).test_client()
    good = SAMPLE_VALUES.get(datatype, [0, 0])[:2] if datatype == "BOOL" else [0, 0]
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": datatype,
                        "data": good + [value]}]}
    response = client.post("/v2/models/echo/infer", json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert says in response.get_json()["error"]


def test_a_model_that_takes_strings_refuses_numbers_on_both_apis(make_app, tmp_path):
    client = make_app(MODEL_DIR=str(identity_model_dir(tmp_path, "BYTES"))).test_client()
    score = client.post("/score", json={"instances": [["a", "b", "c"]]})
    assert score.get_json()["predictions"] == [["a", "b", "c"]]
    numbers = client.post("/score", json={"instances": [["a", 1, "c"]]})
    assert numbers.status_code == 422
    assert numbers.get_json()["error"]["code"] == "non_text_value"
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a", 1, "c"]}]}
    v2 = client.post("/v2/models/echo/infer", json=body)
    assert v2.status_code == 400
    assert "data[1] is a number; expected a string" in v2.get_json()["error"]
    schema = client.get("/openapi.json").get_json()["paths"]["/score"]["post"]["requestBody"]
    rows = schema["content"]["application/json"]["schema"]["properties"]["instances"]
    assert rows["items"]["items"] == {"type": "string"}


def test_bytes_is_parsed_where_a_model_takes_strings():
    spec = InputSpec("text", 2, np.dtype(object))
    body = {"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES",
                        "data": ["a", "b"]}]}
    request = parse_request(body, spec, "BYTES", 10, ("label",))
    assert request.instances.dtype == object and request.instances.tolist() == [["a", "b"]]
    body["inputs"][0]["data"] = ["a", 1]
    with pytest.raises(ApiError, match=r"data\[1\] is a number; expected a string"):
        parse_request(body, spec, "BYTES", 10, ("label",))


# --- the fast path for plain tensors -------------------------------------------------

SPEC = InputSpec("input", 3, np.dtype(np.float32))


@pytest.mark.parametrize("body", [
    b'{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6.5]}]}',
    b'{"id":"a","inputs":[{"name":"input","shape":[2,3],"datatype":"FP32",'
    b'"data":[[1,2,3],[4,5,6.5]]}]}',
])
def test_the_fast_path_takes_plain_tensors_as_the_checks_do(body):
    fast = plain_request(body, SPEC, "FP32", 10)
    general = parse_request(json.loads(body), SPEC, "FP32", 10, ("y",))
    assert fast is not None and fast.instances.dtype == np.float32
    assert fast.instances.tobytes() == general.instances.tobytes() and fast.id == general.id


@pytest.mark.parametrize("body", [
    b'{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,[5],6]]}]}',
    b'{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[],[4,5,6]]}]}',
    b'{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,[],2,3]}]}',
    b'{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[]}',
    b'{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3],"name":"z"}]}',
    b'{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,1e39]}]}',
    b'{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,true]}]}',
    b'{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP64","data":[1,2,3]}]}',
    b'{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]} 1',
    b'{"id":"[","inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}',
])
def test_the_fast_path_leaves_everything_else_to_the_checks(body):
    assert plain_request(body, SPEC, "FP32", 10) is None


# --- a body the server bridge refused ------------------------------------------------


def test_a_body_refused_by_the_server_bridge_is_answered_in_the_protocols_shape(make_app):
    """app.rsgi_bridge hands the front its 413/408/400 for the body; on a v2 URL the answer
    is {"error": ...}, counted under the infer route, and on /score it keeps its shape."""
    import io

    from app.errors import body_too_large
    from app.front import REQUEST_PROBLEM_KEY

    app = make_app(API_KEY=KEY)

    def refused(path: str):
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "wsgi.input": io.BytesIO(),
                   REQUEST_PROBLEM_KEY: body_too_large(10)}
        answered = {}
        body = b"".join(app.wsgi_app(environ, lambda status, headers: answered.update(
            status=status, headers=dict(headers))))
        return answered["status"], json.loads(body)

    status, body = refused("/v2/models/digits/versions/1.2.3/infer")
    assert status.startswith("413") and body == {
        "error": "request body is larger than the limit of 10 bytes"}
    status, body = refused("/score")
    assert status.startswith("413") and body["error"]["code"] == "payload_too_large"
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert ('route="/v2/models/<model_name>/versions/<model_version>/infer",status="413"} 1.0'
            in text)
