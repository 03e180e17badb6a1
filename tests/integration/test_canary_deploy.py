"""Canary releases on the local runtime, with real traffic through the edge.

A separate app (`canary-api`, edge on 18290, derived images in its own repository) so the project's
digits deployment is never touched. Its stable version is the digits image the session
builds; each canary is an image derived from it: the same model (promoted through every
step), a model that answers the golden samples right and the traffic differently (rolled
back on drift), a wrapper whose model fails on every fourth call (rolled back on errors),
and the same model with no traffic at all (inconclusive, rolled back, never promoted). The
clients (tests/support/load.py) must see no failed request from promotion or rollback;
the only failures allowed are the 500s the failing canary itself serves. Short windows
come from the `-f` runtime file, as a user would set them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest
import yaml

from modelship import canary, local_canary, local_edge, local_runtime, names
from modelship.registry import login
from modelship.release_record import load as read_record
from modelship.settings import PROJECT_ROOT, load_settings
from tests.support.images import derived_image
from tests.support.load import Load

pytestmark = pytest.mark.integration

APP_NAME = "canary-api"
PORT = 18290
RELEASE = {"strategy": "canary", "canary": {
    "steps": [20, 50, 100], "interval": "3s", "min_requests": 20, "max_inconclusive": 1,
    "max_error_rate_increase": 0.01, "max_p99_ratio": 3.0, "p99_slack_ms": 20,
    "max_drift": 0.1, "drift_measure": "js"}}


@pytest.fixture(scope="module")
def runtime_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("canary") / "canary.yaml"
    path.write_text(yaml.safe_dump({"modelship": {"app_name": APP_NAME, "environments": {
        # The digits image repository: `apply` verifies the build's signature there.
        "local": {"deployment": {"port": PORT}, "release": RELEASE}}}}))
    return path


@pytest.fixture(scope="module")
def release(runtime_file, local_stack, published_model, docker_client):
    """The digits build (deployed once the ordinary way), this app's settings and images."""
    from invoke import Config

    deployed = subprocess.run([sys.executable, "-m", "invoke", "deploy", "--env=local"],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    config = Config(project_location=str(PROJECT_ROOT), runtime_path=str(runtime_file))
    config.load_project()
    config.load_runtime()
    settings = load_settings(config, "local")
    record = read_record()
    auth = login(docker_client, settings)
    base = record.require_push("local").reference
    images = {"base": base, "same": derived_image(
        docker_client, repository(settings), base, "canary-same",
        ['LABEL ai.modelship.test.canary="same"'], auth=auth)}
    yield settings, record.model.as_metadata(), auth, images
    local_runtime.remove(docker_client, settings)


def repository(settings) -> str:
    """Where the derived images go: this app's own repository in the local registry."""
    return f"{settings.registry.host}/{APP_NAME}"


def traffic_rows() -> tuple[list, list]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data[:300].astype(np.float32).tolist(), digits.target[:300].tolist()


def shifted_model(metadata: dict, folder) -> dict[str, bytes]:
    """A model that answers every golden sample right and, on the traffic, 1 for every digit
    from 5 up: the same golden check passes, the answers' distribution moves."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.tree import DecisionTreeClassifier

    from modelship.sample_model import describe_model

    rows, labels = traffic_rows()
    golden = metadata["golden"]
    x = np.array([sample["instance"] for sample in golden] + rows, dtype=np.float32)
    y = [sample["label"] for sample in golden] + [label if label < 5 else 1 for label in labels]
    tree = DecisionTreeClassifier(random_state=0).fit(x, y)
    onnx = convert_sklearn(tree, initial_types=[("input", FloatTensorType([None, 64]))],
                           options={id(tree): {"zipmap": False}})
    path = folder / "model.onnx"
    path.write_bytes(onnx.SerializeToString())
    described = describe_model(path, metadata["name"], "9.9.9-shifted", golden,
                               labels=list(range(10)))
    return {"model/model.onnx": path.read_bytes(),
            "model/metadata.json": json.dumps(described).encode()}


def serving(docker_client, settings, reference):
    """`reference` as the stable version, alone behind the edge."""
    local_runtime.end_interrupted_canary(docker_client, settings, print)
    if not local_runtime.already_serving(docker_client, settings, reference, print):
        local_runtime.deploy(docker_client, settings, reference, None, None, print,
                             check_golden_sample=False)


def invoke(runtime_file, *arguments, **options):
    return subprocess.Popen([sys.executable, "-m", "invoke", "-f", str(runtime_file),
                             *arguments], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **options)


def wait_for_canary_share(runtime_file, settings, applying=None, deadline_seconds=90,
                          show_status=True) -> str:
    """`invoke status`, run as soon as the edge gives the canary its first share (20%); with
    `show_status` False, return at that moment (status can take seconds on a busy machine,
    longer than a step lasts)."""
    edge = local_edge.Edge.of(settings)
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if applying is not None and applying.poll() is not None:
            output, errors = applying.communicate()
            raise AssertionError(f"apply ended early: {output[-2000:]}{errors[-2000:]}")
        try:
            if sorted(local_edge.shares(edge).values()) == [20, 80]:
                if not show_status:
                    return ""
                shown, _ = invoke(runtime_file, "status", "--env=local").communicate(timeout=60)
                return shown
        except Exception:  # the edge is being started or reconfigured
            pass
        time.sleep(0.05)
    raise AssertionError("the canary never reached its first share")


def edge_url():
    return f"http://127.0.0.1:{PORT}"


def stable_answers(rows) -> list:
    """What the serving version predicts for `rows`: what an agreeing release must answer."""
    import requests

    answer = requests.post(f"{edge_url()}/score", json={"instances": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


@contextmanager
def cli_canary_under_load(release, runtime_file, docker_client, show_status=True):
    """The "same" image stable, clients scoring, and `invoke apply --strategy=canary` of the
    build's image running, at its first share: (load, the apply process, status output)."""
    settings, _, _, images = release
    serving(docker_client, settings, images["same"])
    rows, _ = traffic_rows()
    with Load(edge_url(), rows, stable_answers(rows)) as load:
        applying = invoke(runtime_file, "apply", "--env=local", "--strategy=canary")
        try:
            yield load, applying, wait_for_canary_share(runtime_file, settings, applying,
                                                        show_status=show_status)
        finally:
            if applying.poll() is None:
                applying.communicate(timeout=300)


def assert_only_stable_left(docker_client, settings, reference):
    assert docker_client.containers.get(local_runtime.container_name(settings)) \
        .attrs["Config"]["Image"] == reference
    names = {c.name for c in docker_client.containers.list(all=True)}
    assert local_runtime.canary_name(settings) not in names


def test_cli_canary_of_an_agreeing_release_is_promoted_through_every_step(
        release, runtime_file, docker_client):
    settings, metadata, auth, images = release
    with cli_canary_under_load(release, runtime_file, docker_client) as (load, applying,
                                                                          status):
        output, errors = applying.communicate(timeout=300)
    assert applying.returncode == 0, output[-3000:] + errors[-3000:]
    planned, _ = invoke(runtime_file, "--dry", "apply", "--env=local",
                        "--strategy=canary").communicate(timeout=120)
    assert "shares 20%, 50% for 3s each" in planned and "weights" in planned
    # Read at the first share; on a busy machine status may land in the next step.
    assert re.search(r"canary (20%, stable 80%|50%, stable 50%)", status) and "on slot" in status, \
        status
    assert canary.HEADER in output and "canary promoted" in output
    assert set(load.outcomes) == {"ok"}, (load.outcomes, load.failures)
    assert load.total > 200
    assert_only_stable_left(docker_client, settings, images["base"])
    recorded = read_record().canary["local"]
    assert recorded.outcome == "promoted" and recorded.reference == images["base"]
    assert [d["share"] for d in recorded.decisions] == [20, 50]
    assert all(d["verdict"] == "pass" and d["canary"]["requests"] >= 20
               for d in recorded.decisions)
    # The promoted canary keeps what was verified, as a rolling release does, so a later
    # `invoke rollback` past it can verify the image it returns to.
    labels = docker_client.containers.get(local_runtime.container_name(settings)).labels
    record = read_record()
    assert labels[names.RELEASE_COMMIT_LABEL] == record.source.revision
    assert labels[names.RELEASE_MODEL_SHA256_LABEL] == record.model.sha256
    assert labels[names.PREVIOUS_IMAGE_LABEL] == images["same"]


def test_shifted_predictions_are_rolled_back_on_drift(release, docker_client, tmp_path):
    settings, metadata, auth, images = release
    serving(docker_client, settings, images["base"])
    shifted = derived_image(docker_client, repository(settings), images["base"],
                            "canary-shifted", ["COPY model/ /opt/model/"],
                            shifted_model(metadata, tmp_path), auth)
    rows, _ = traffic_rows()
    with Load(edge_url(), rows) as load:
        result = local_canary.deploy(docker_client, settings, shifted, auth, metadata, print)
        time.sleep(1)
    assert not result.promoted
    assert "failed on drift: js" in result.reason, result.reason
    assert result.decisions[-1].drift > 0.4
    assert set(load.outcomes) == {"ok"}, (load.outcomes, load.failures)
    assert_only_stable_left(docker_client, settings, images["base"])


def test_a_release_that_fails_part_of_its_traffic_is_rolled_back_on_errors(
        release, docker_client):
    settings, metadata, auth, images = release
    serving(docker_client, settings, images["base"])
    flaky = derived_image(
        docker_client, repository(settings), images["base"], "canary-flaky",
        ["COPY flaky_app.py /opt/service/flaky_app.py", 'CMD ["python3", "-m", "flaky_app"]'],
        {"flaky_app.py": (PROJECT_ROOT / "tests/support/flaky_app.py").read_bytes()}, auth)
    rows, _ = traffic_rows()
    with Load(edge_url(), rows) as load:
        result = local_canary.deploy(docker_client, settings, flaky, auth, metadata, print)
        after_rollback = load.total
        time.sleep(2)
        failed_before = load.outcomes["status 500"]
        time.sleep(1)
    assert not result.promoted and result.reason.startswith("step 1 (20%) failed on errors")
    # The only failures are the canary's own 500s, and none once it was rolled back.
    assert set(load.outcomes) <= {"ok", "status 500"}, (load.outcomes, load.failures)
    assert load.outcomes["status 500"] == failed_before and load.total > after_rollback
    assert_only_stable_left(docker_client, settings, images["base"])


def test_no_traffic_is_inconclusive_and_rolls_back_never_promotes(release, docker_client):
    settings, metadata, auth, images = release
    serving(docker_client, settings, images["base"])
    result = local_canary.deploy(docker_client, settings, images["same"], auth, metadata, print)
    assert not result.promoted
    assert [d.verdict for d in result.decisions] == ["inconclusive", "inconclusive"]
    assert "no evidence, no promotion" in result.reason
    assert_only_stable_left(docker_client, settings, images["base"])


def test_ctrl_c_rolls_back_and_rollback_ends_a_canary_a_killed_deploy_left(
        release, runtime_file, docker_client):
    settings, metadata, auth, images = release
    with cli_canary_under_load(release, runtime_file, docker_client,
                               show_status=False) as (load, applying, _):
        applying.send_signal(signal.SIGINT)  # within its first 3 s step
        output, errors = applying.communicate(timeout=120)
        assert applying.returncode == 1, output[-2000:] + errors[-2000:]
        assert "interrupted and rolled back" in errors, output[-2000:] + errors[-2000:]
        assert_only_stable_left(docker_client, settings, images["same"])
        assert read_record().canary["local"].reason == "interrupted"

        # What a killed deploy (SIGKILL) leaves: a canary with a share and nobody deciding.
        started = local_runtime.start_beside(docker_client, settings, images["base"], auth,
                                             metadata, print,
                                             name_suffix=local_runtime.CANARY_SUFFIX)
        local_edge.split(started.edge, started.port, 20)
        assert "canary 20%, stable 80%" in wait_for_canary_share(runtime_file, settings)
        rolled, errors = invoke(runtime_file, "rollback", "--env=local").communicate(
            timeout=120)
        assert "canary ended" in rolled, errors
        time.sleep(1)
    assert set(load.outcomes) == {"ok"}, (load.outcomes, load.failures)
    assert_only_stable_left(docker_client, settings, images["same"])
