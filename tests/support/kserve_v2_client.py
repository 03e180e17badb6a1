"""Drive a v2 server with the kserve package's REST client; run by the kserve virtualenv.

    .local/tools/kserve/bin/python tests/support/kserve_v2_client.py < request.json

kserve pins packages the host's virtualenv cannot take, so it lives in a virtualenv of its
own (scripts/setup.sh) and the tests (tests/integration/test_open_inference_clients.py)
run this script there. It reads {"base_url", "model", "input", "rows", "api_key"} on
stdin and prints, as one JSON object, what the client reported: liveness, readiness,
model readiness, an unknown model's readiness, the status of infer without the key, and
the outputs of one infer call.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def answer_or_status(call):
    """What the call returns, or the HTTP status it raised for."""
    try:
        return await call
    except httpx.HTTPStatusError as error:
        return error.response.status_code


async def drive(request: dict) -> dict:
    base_url, model = request["base_url"], request["model"]
    key = {"Authorization": f"Bearer {request['api_key']}"}
    rows = np.asarray(request["rows"], dtype=np.float32)
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30, retries=0))
    try:
        report = {
            "live": await client.is_server_live(base_url),
            "ready": await client.is_server_ready(base_url),
            "model_ready": await client.is_model_ready(base_url, model),
            "unknown_model_ready": await answer_or_status(
                client.is_model_ready(base_url, "no-such-model")),
        }
        tensor = InferInput(request["input"], list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=False)
        infer_request = InferRequest(model, [tensor], request_id="kserve-1")
        keyless = await answer_or_status(client.infer(base_url, infer_request, model_name=model))
        report["keyless_infer"] = keyless if isinstance(keyless, int) else "answered"
        answer = await client.infer(base_url, infer_request, model_name=model, headers=key)
        report.update(
            model_name=answer.model_name,
            id=answer.id,
            outputs={output.name: {"datatype": output.datatype, "shape": list(output.shape),
                                   "data": output.as_numpy().tolist()}
                     for output in answer.outputs},
        )
    finally:
        await client.close()
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(drive(json.load(sys.stdin)))))
