"""A test-only serving app whose model fails on every fourth prediction (a 500 to the client).

Copied into an image derived from the real one (`python3 -m flaky_app`), it runs `app.serve`
exactly as the container does, but each worker's model raises on every fourth call after it
is ready, inside the app's front, so the failures are the app's own JSON 500s, counted in
/metrics on the scoring route like any bug in a model would be. The first calls (the
deployer's golden check) pass, so the release reaches its canary.
"""

from __future__ import annotations

import itertools

from app import create_app, serve
from app.model import model_of
from app.rsgi_bridge import RsgiBridge


def worker_app():
    app = create_app()
    model = model_of(app)
    predict, calls = model.predict, itertools.count(1)

    def flaky_predict(instances):
        if next(calls) % 4 == 0:
            raise RuntimeError("deliberate test failure")
        return predict(instances)

    model.predict = flaky_predict
    return RsgiBridge(app)


if __name__ == "__main__":
    serve.main("flaky_app:worker_app")
