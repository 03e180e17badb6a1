"""An app's contract: which route scores, which keys carry the rows and the predictions.

The pipeline's checks (contract test, smoke test, local release) and the image's server
(the golden replay behind /readyz) talk to the app through this one description, so a
project's own `POST /predict` taking `{"rows": ...}` and answering `{"labels": ...}` is
tested the way the sample's `/score` is. The settings' `app` section fills it on the host;
in the image it comes from the APP_* variables the Dockerfile bakes in. Pure Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from modelship_serving.golden import Tolerance, first_mismatch


@dataclass(frozen=True)
class AppContract:
    score_path: str = "/score"
    request_key: str = "instances"
    predictions_key: str = "predictions"
    # Empty: the app has none and the image's server answers /healthz, /readyz itself.
    health_path: str = "/healthz"
    readiness_path: str = "/readyz"

    @property
    def probed_health_path(self) -> str:
        return self.health_path or "/healthz"

    @property
    def probed_readiness_path(self) -> str:
        return self.readiness_path or "/readyz"

    def request_body(self, samples: list[dict]) -> dict:
        return {self.request_key: [sample["instance"] for sample in samples]}

    def mismatch(self, samples: list[dict], answer, metadata: dict) -> str | None:
        """Why the app's answer to the golden samples is wrong, or None (golden's rules)."""
        if not isinstance(answer, dict) or self.predictions_key not in answer:
            return f"the answer has no {self.predictions_key!r} key"
        scored = {"predictions": answer[self.predictions_key]}
        if "probabilities" in answer:
            scored["probabilities"] = answer["probabilities"]
        return first_mismatch(samples, scored, Tolerance.of(metadata))

    @classmethod
    def from_environment(cls, environ=os.environ) -> "AppContract":
        """The contract the image was built with (APP_SCORE_PATH, APP_REQUEST_KEY, ...)."""
        values = {name: environ[f"APP_{name.upper()}"] for name in cls.__dataclass_fields__
                  if f"APP_{name.upper()}" in environ}
        return cls(**values)

    def as_environment(self) -> dict[str, str]:
        return {f"APP_{name.upper()}": getattr(self, name) for name in self.__dataclass_fields__}
