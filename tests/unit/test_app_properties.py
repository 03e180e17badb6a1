"""Property-based checks: whatever a client sends, /score answers a JSON 4xx or 200, never 5xx.

Also replays the app's own OpenAPI description against it (schemathesis, in process).
"""

import json

import numpy as np
import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from app.errors import ApiError
from app.instances import decode_json, holds_only_numbers, numeric_table, parse_instances
from app.model import InputSpec

FEATURES = 64
API_KEY = "property-key"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=70)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=200,
)
# Bodies shaped like a request, so the checks past "is it an object" get exercised too.
almost_valid = st.fixed_dictionaries(
    {"instances": st.lists(st.lists(json_values, min_size=62, max_size=66), max_size=3)}
)
numeric_rows = st.fixed_dictionaries(
    {
        "instances": st.lists(
            st.lists(
                st.floats(allow_nan=True, allow_infinity=True) | st.integers(),
                min_size=FEATURES,
                max_size=FEATURES,
            ),
            max_size=4,
        )
    }
)

PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def property_client(sample_model_dir):
    app = create_app(
        {"TESTING": True, "MODEL_DIR": str(sample_model_dir), "MAX_CONTENT_LENGTH": 64 * 1024}
    )
    return app.test_client()


def assert_client_error_or_success(response):
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    if response.status_code == 200:
        assert len(body["predictions"]) >= 1
    else:
        assert set(body["error"]) == {"code", "message"} and body["error"]["message"]


@PROPERTY_SETTINGS
@given(body=json_values | almost_valid | numeric_rows)
def test_any_json_body_is_never_a_server_error(property_client, body):
    data = json.dumps(body)  # NaN and Infinity included, as Python clients send them
    response = property_client.post("/score", data=data, content_type="application/json")
    assert_client_error_or_success(response)


@PROPERTY_SETTINGS
@given(
    data=st.binary(max_size=2000),
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=latin-1", "text/plain", "", "x/y+json"]
    ),
)
def test_any_bytes_are_never_a_server_error(property_client, data, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = property_client.post("/score", data=data, headers=headers)
    assert_client_error_or_success(response)


# --- the fast path for plain tables (numeric_table) against the general one ----------

SHORT_ROW = 3
MAX_BATCH = 3
small_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=3),
    st.lists(st.integers(), max_size=SHORT_ROW),
)
# Mostly numbers in rows of the right length, so that the odd value out is what decides.
row_values = (
    st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.booleans() | small_values
)
short_rows = st.lists(
    st.lists(row_values, min_size=SHORT_ROW, max_size=SHORT_ROW)
    | st.lists(row_values, max_size=SHORT_ROW + 1),
    min_size=1,
    max_size=MAX_BATCH + 1,
)
spellings = st.sampled_from([
    lambda payload: json.dumps(payload),
    lambda payload: json.dumps(payload, indent=1),
    lambda payload: json.dumps(payload, separators=(",", ":")),
])
payloads = st.fixed_dictionaries(
    {"instances": short_rows | small_values},
    optional={"extra": small_values, "parameters": st.dictionaries(
        st.text(max_size=3), small_values, max_size=2)},
)
# Number tokens as a client might write them, valid JSON or not; only the byte scan's
# alphabet, so that simdjson, not the scan, is what has to refuse the bad ones.
number_tokens = st.one_of(
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,6})?([eE][+-]?[0-9]{1,3})?\Z"),
    st.sampled_from(["01", "1.", ".5", "+1", "-", "1e", "1e+", "--1", "1-", "", "[1]", "[]",
                     "1 2", "9007199254740993", str(2**60 + 2**36 + 1), "1e39", "-1e400", "18446744073709551616"]),
)
token_rows = st.lists(st.lists(number_tokens, min_size=0, max_size=SHORT_ROW + 1),
                      min_size=0, max_size=MAX_BATCH + 1)
SPECS = [
    InputSpec("float32", SHORT_ROW, np.dtype(np.float32)),
    InputSpec("float64", SHORT_ROW, np.dtype(np.float64)),
    InputSpec("float16", SHORT_ROW, np.dtype(np.float16)),  # 70000 does not fit
    InputSpec("int64", SHORT_ROW, np.dtype(np.int64)),
]


def table_body(rows: list, space: str) -> bytes:
    table = f",{space}".join("[" + f",{space}".join(row) + "]" for row in rows)
    return f'{{{space}"instances":{space}[{table}]{space}}}'.encode()


def assert_fast_path_agrees(body: bytes, spec: InputSpec) -> None:
    """numeric_table gives nothing, or exactly what the general path gives."""
    try:
        general = parse_instances(decode_json(body), spec, max_batch=MAX_BATCH)
    except ApiError:
        general = None
    fast = numeric_table(body, spec, max_batch=MAX_BATCH)
    if fast is not None:
        assert general is not None, body
        assert (fast.dtype, fast.shape, fast.tobytes()) == (
            general.dtype, general.shape, general.tobytes()
        ), body


@PROPERTY_SETTINGS
@given(payload=payloads, spell=spellings, spec=st.sampled_from(SPECS))
def test_the_fast_path_agrees_with_the_checks_on_any_payload(payload, spell, spec):
    assert_fast_path_agrees(spell(payload).encode(), spec)


@PROPERTY_SETTINGS
@given(rows=token_rows, space=st.sampled_from(["", " ", "\n  "]),
       spec=st.sampled_from(SPECS))
def test_the_fast_path_agrees_with_the_checks_on_any_number_spelling(rows, space, spec):
    assert_fast_path_agrees(table_body(rows, space), spec)


def test_the_fast_path_takes_plain_tables():
    spec = SPECS[0]
    body = b'{"instances": [[1, -2.5e3, 0.0], [4, 5, 6E-1]]}'
    fast = numeric_table(body, spec, max_batch=MAX_BATCH)
    assert fast is not None and fast.dtype == np.float32
    assert fast.tolist() == [[1.0, -2500.0, 0.0], [4.0, 5.0, pytest.approx(0.6)]]


@pytest.mark.parametrize(
    "body, dtype",
    [
        (b'{"instances": [[1, 2, [3]]]}', np.float32),
        (b'{"instances": [[1, 2, 3], [4, 5]]}', np.float32),
        (b'{"instances": [[1, 2, 3]], "extra": 1}', np.float32),
        (b'{"instances": [[1, 2, 3]]} 7', np.float32),
        (b'{"instances": [[1e39, 2, 3]]}', np.float32),
        (b'{"instances": [[70000, 2, 3]]}', np.float16),
        (b'{"instances": [[1e400, 2, 3]]}', np.float64),
        (b'{"instances": [[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]]}', np.float32),  # > max
        (b'{"instances": []}', np.float32),
        (b'{"instances": [[1, 2, 3]]}', np.int64),  # whole numbers are the checks' business
    ],
)
def test_the_fast_path_leaves_everything_else_to_the_checks(body, dtype):
    spec = InputSpec("any", SHORT_ROW, np.dtype(dtype))
    assert numeric_table(body, spec, max_batch=MAX_BATCH) is None


@pytest.mark.parametrize(
    "body, only_numbers",
    [
        (b'{"instances": [[1, -2.5e3, 0.0], [4, 5, 6E-1]]}', True),
        (b'{\n  "instances":[[1,2,3]]\r\n}', True),
        (b'{"instances": [[true, 2, 3]]}', False),
        (b'{"instances": [[null, 2, 3]]}', False),
        (b'{"instances": [[NaN, 2, 3]]}', False),
        (b'{"instances": [["1", 2, 3]]}', False),
        (b'{"instances": [[{}, 2, 3]]}', False),
        (b'{"instances": [[1, 2, 3]], "extra": 1}', False),
        (b'{"instan\\u0063es": [[1, 2, 3]]}', False),
    ],
)
def test_the_byte_scan_trusts_only_bodies_of_numbers(body, only_numbers):
    assert holds_only_numbers(body) is only_numbers


# --- the app against its own OpenAPI description (schemathesis, in process) ----------


@pytest.fixture(scope="module")
def described_app(sample_model_dir):
    return create_app({"MODEL_DIR": str(sample_model_dir), "MAX_BATCH": 20, "API_KEY": API_KEY})


def check_operation_conforms(operation, generation_mode) -> None:
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode))
    def conforms(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"})

    conforms()


@pytest.mark.parametrize("generation_mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_app_conforms_to_its_openapi_description(described_app, generation_mode):
    """Valid requests get the documented success; invalid ones a documented 4xx."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", described_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/score", "/readyz", "/metrics"}
    for operation in operations:
        if generation_mode is GenerationMode.NEGATIVE and operation.path != "/score":
            continue  # nothing to get wrong in a GET without parameters
        check_operation_conforms(operation, generation_mode)
