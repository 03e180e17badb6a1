"""Property-based checks of the v2 API: whatever a client sends to infer, the answer is a
JSON 4xx in the protocol's shape or a 200, never a 5xx; the fast path for plain tensors
agrees with the general checks; and the app conforms to docs/open-inference-v2.yaml, the
protocol's REST description (schemathesis, in process)."""

import json
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import create_app
from app.errors import ApiError
from app.instances import decode_json
from app.model import InputSpec
from app.open_inference import PROTOCOL_DATATYPES, parse_request, plain_request

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_DESCRIPTION = REPO / "docs" / "open-inference-v2.yaml"
API_KEY = "property-key"
INFER_URL = "/v2/models/digits/infer"

PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=8)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=60,
)
numbers = st.integers() | st.floats() | st.booleans()
shapes = st.lists(st.integers(min_value=-1, max_value=4) | st.just(64) | numbers, max_size=3)
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", "other"]) | json_values,
     "shape": shapes | json_values,
     "datatype": st.sampled_from(PROTOCOL_DATATYPES) | json_values,
     "data": st.lists(numbers | json_values, max_size=130)
     | st.lists(st.lists(numbers, min_size=63, max_size=65), max_size=3) | json_values},
    optional={"parameters": json_values},
)
requests_ = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=2) | json_values},
    optional={"id": json_values, "outputs": json_values
              | st.lists(st.fixed_dictionaries({"name": st.sampled_from(["label", "x"])})),
              "parameters": json_values},
)


@pytest.fixture(scope="module")
def property_client(sample_model_dir):
    app = create_app({"TESTING": True, "MODEL_DIR": str(sample_model_dir),
                      "MAX_CONTENT_LENGTH": 64 * 1024, "MAX_BATCH": 3})
    return app.test_client()


def assert_protocol_answer(response):
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    if response.status_code == 200:
        assert body["model_name"] == "digits" and body["outputs"]
    else:
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]


@PROPERTY_SETTINGS
@given(body=requests_ | json_values)
def test_any_json_body_is_never_a_server_error(property_client, body):
    response = property_client.post(INFER_URL, data=json.dumps(body),
                                    content_type="application/json")
    assert_protocol_answer(response)


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=2000),
       content_type=st.sampled_from(["application/json", "", "text/plain", "x/y+json"]))
def test_any_bytes_are_never_a_server_error(property_client, data, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    assert_protocol_answer(property_client.post(INFER_URL, data=data, headers=headers))


# --- the fast path (plain_request) against the general checks (parse_request) ---------

FEATURES = 3
MAX_BATCH = 3
SPECS = [InputSpec("x", FEATURES, np.dtype(dtype))
         for dtype in (np.float32, np.float64, np.float16, np.int64)]
values = (st.integers() | st.floats(allow_nan=False, allow_infinity=False)
          | st.sampled_from([1e39, -1e39, 70000, 2**64, True, None, "1", [1], []]))
plain_tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "y"]),
     "shape": st.sampled_from([[1, 3], [2, 3], [3, 3], [4, 3], [1, 2], [0, 3], [6], [2, 3, 1]]),
     "datatype": st.sampled_from(["FP32", "FP64", "FP16", "INT64"]),
     "data": st.lists(values, max_size=10)
     | st.lists(st.lists(values, min_size=2, max_size=4), max_size=4)},
    optional={"parameters": st.just({})},
)
plain_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(plain_tensors, min_size=1, max_size=2)},
    optional={"id": st.text(max_size=3) | st.integers(), "outputs": st.just([])},
)
spellings = st.sampled_from([
    lambda payload: json.dumps(payload),
    lambda payload: json.dumps(payload, indent=1),
    lambda payload: json.dumps(payload, separators=(",", ":")),
])


@PROPERTY_SETTINGS
@given(payload=plain_bodies, spell=spellings, spec=st.sampled_from(SPECS))
def test_the_fast_path_agrees_with_the_checks(payload, spell, spec):
    body = spell(payload).encode()
    datatype = {"f": {2: "FP16", 4: "FP32", 8: "FP64"}[spec.dtype.itemsize]}.get(
        spec.dtype.kind, "INT64")
    try:
        general = parse_request(decode_json(body), spec, datatype, MAX_BATCH, ("y",))
    except ApiError:
        general = None
    fast = plain_request(body, spec, datatype, MAX_BATCH)
    if fast is not None:
        assert general is not None, body
        assert (fast.instances.dtype, fast.instances.shape, fast.instances.tobytes(), fast.id) \
            == (general.instances.dtype, general.instances.shape, general.instances.tobytes(),
                general.id), body


# --- the app against the protocol's REST description (schemathesis, in process) ------


@pytest.fixture(scope="module")
def described_app(sample_model_dir):
    return create_app({"MODEL_DIR": str(sample_model_dir), "MAX_BATCH": 20, "API_KEY": API_KEY})


def check_operation_conforms(operation, generation_mode, version: str) -> None:
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode), served=st.booleans())
    def conforms(case, served):
        # Half the positive cases name the model actually served, so that its metadata and
        # infer answers are checked too, not only the 404 for names nobody serves.
        if served and generation_mode is GenerationMode.POSITIVE and case.path_parameters:
            case.path_parameters["model_name"] = "digits"
            if "model_version" in case.path_parameters:
                case.path_parameters["model_version"] = version
        # The description is the protocol's, for any model: a body it allows can still be
        # one this model cannot take (a 400), so only "schema-valid means 2xx" is not checked.
        case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"},
                               excluded_checks=[positive_data_acceptance])

    conforms()


@pytest.mark.parametrize("generation_mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_app_conforms_to_the_protocols_description(described_app, sample_model_version,
                                                      generation_mode):
    """Valid requests get a documented answer; invalid ones a documented 4xx; none a 5xx."""
    schema = schemathesis.openapi.from_path(PROTOCOL_DESCRIPTION)
    schema.app = described_app
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9
    for operation in operations:
        if generation_mode is GenerationMode.NEGATIVE and "infer" not in operation.path:
            continue  # a GET with string path parameters has nothing to get wrong
        check_operation_conforms(operation, generation_mode, sample_model_version)
