"""Checks against a running instance of the serving app, over HTTP.

Shared by the container contract test, the local deployment and the post-rollout smoke
test: readiness with a deadline, and the model's golden samples through `/score` and (the
contract and smoke tests) through the Open Inference Protocol's `/v2/.../infer`. It must
never send anything to an address the caller did not give it.
"""

from __future__ import annotations

import time
from typing import Callable

import requests

from modelship_serving.contract import AppContract
from modelship_serving.golden import Tolerance, first_mismatch

from .errors import PipelineError


def wait_ready(base_url: str, seconds: float, still_running: Callable[[], bool],
               logs: Callable[[], str], readiness_path: str = "/readyz") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}{readiness_path}", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if not still_running():
            raise PipelineError(
                f"The service exited before it became ready. Its last log lines: {logs()}",
                "Fix the cause shown in the log, rebuild and try again.",
            )
        time.sleep(0.2)
    raise PipelineError(
        f"The service did not become ready at {base_url}{readiness_path} within {seconds:.0f} s. "
        f"Its last log lines: {logs()}",
        "Check the model and the app's start-up in the log above.",
    )


def _golden_samples(metadata: dict, limit: int | None) -> list[dict]:
    """The model's golden samples (the first `limit`), refused when it has none."""
    golden = metadata.get("golden") or []
    if not golden:
        raise PipelineError(
            f"Model {metadata.get('name')} {metadata.get('version')} has no golden samples.",
            "Publish it with golden samples (`invoke model.publish` adds them).",
        )
    return golden[:limit] if limit else golden


def check_golden(base_url: str, metadata: dict, limit: int | None = None,
                 api_key: str | None = None, key_fix: str = "Send the service's API key.",
                 contract: AppContract = AppContract()) -> int:
    """Score the model's golden samples through the app's score route and keys (its
    contract); raise unless each matches (modelship_serving.golden's comparison)."""
    samples = _golden_samples(metadata, limit)
    headers = {"X-API-Key": api_key} if api_key else {}
    route = contract.score_path
    try:
        response = requests.post(f"{base_url}{route}", json=contract.request_body(samples),
                                 headers=headers, timeout=10)
    except requests.RequestException as error:
        raise PipelineError(f"{route} at {base_url} did not answer: {error}.",
                            "Check the service's logs.") from None
    if response.status_code == 401:
        raise PipelineError(
            f"{route} refused the golden samples (401): no valid API key was sent.", key_fix
        )
    if response.status_code != 200:
        raise PipelineError(
            f"{route} answered {response.status_code} to the golden samples: "
            f"{response.text[:200]}",
            "The service does not serve its model correctly; check its logs.",
        )
    try:
        answer = response.json()
    except ValueError:
        answer = None
    mismatch = contract.mismatch(samples, answer, metadata)
    if mismatch:
        raise PipelineError(
            f"{route} disagrees with the published model: {mismatch}.",
            "The served model is not the published one, or the app mangles input.",
        )
    return len(samples)


def _v2_call(method: str, url: str, what: str, headers: dict, key_fix: str, **kwargs) -> dict:
    try:
        response = requests.request(method, url, headers=headers, timeout=10, **kwargs)
    except requests.RequestException as error:
        raise PipelineError(f"{what} at {url} did not answer: {error}.",
                            "Check the service's logs.") from None
    if response.status_code == 401:
        raise PipelineError(f"{what} refused the golden samples (401): no valid API key was "
                            "sent.", key_fix)
    if response.status_code != 200:
        raise PipelineError(
            f"{what} answered {response.status_code}: {response.text[:200]}",
            "The service does not serve its model over the v2 API; check its logs.",
        )
    return response.json()


def v2_answer_as_score(model_metadata: dict, answer: dict) -> dict:
    """A v2 infer answer in /score's terms: the first output's values are the predictions, a
    second [rows, classes] output the probabilities (the order app.model reads them in)."""
    outputs = {output.get("name"): output for output in answer.get("outputs") or []}
    declared = model_metadata.get("outputs") or []
    if not declared or declared[0].get("name") not in outputs:
        return {"predictions": []}
    result = {"predictions": list(outputs[declared[0]["name"]].get("data") or [])}
    if len(declared) > 1 and len(declared[1].get("shape") or []) == 2 \
            and declared[1].get("name") in outputs:
        probabilities = outputs[declared[1]["name"]]
        shape = probabilities.get("shape") or [0, 0]
        data, width = list(probabilities.get("data") or []), shape[-1] if shape else 0
        result["probabilities"] = [data[row * width:(row + 1) * width]
                                   for row in range(shape[0])] if width else []
    return result


def check_golden_v2(base_url: str, metadata: dict, limit: int | None = None,
                    api_key: str | None = None,
                    key_fix: str = "Send the service's API key.") -> int:
    """The golden samples through `POST /v2/models/<name>/versions/<version>/infer`, its
    input named and typed as `GET /v2/models/<name>` says; raise unless each matches."""
    samples = _golden_samples(metadata, limit)
    model_url = f"{base_url}/v2/models/{metadata['name']}/versions/{metadata['version']}"
    model_metadata = _v2_call("GET", model_url, "v2 model metadata", {}, key_fix)
    inputs = model_metadata.get("inputs") or [{}]
    rows = [sample["instance"] for sample in samples]
    body = {"id": "golden-samples", "inputs": [{
        "name": inputs[0].get("name"), "datatype": inputs[0].get("datatype"),
        "shape": [len(rows), len(rows[0])], "data": rows}]}
    headers = {"X-API-Key": api_key} if api_key else {}
    answer = _v2_call("POST", f"{model_url}/infer", "v2 infer", headers, key_fix, json=body)
    mismatch = first_mismatch(samples, v2_answer_as_score(model_metadata, answer),
                              Tolerance.of(metadata))
    if mismatch:
        raise PipelineError(
            f"v2 infer disagrees with the published model: {mismatch}.",
            "The served model is not the published one, or the v2 API mangles input.",
        )
    return len(samples)


def check_version(base_url: str, metadata: dict) -> dict:
    version = requests.get(f"{base_url}/version", timeout=5).json()
    served = version.get("model", {}).get("sha256")
    if served != metadata.get("sha256"):
        raise PipelineError(
            f"/version reports model sha256 {served}, expected {metadata.get('sha256')}.",
            "The image embeds another model than the one fetched; rebuild it.",
        )
    return version
