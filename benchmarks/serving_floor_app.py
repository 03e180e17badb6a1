"""The HTTP floor for bench_serving.py: Flask answering one constant JSON, nothing else.

Run under the app's own gunicorn configuration, it measures what Flask + gunicorn
cost on this machine before any parsing, validation, model, logging or metrics. It
must stay this bare, or the floor stops being a floor.
"""

from flask import Flask

_ANSWER = {"predictions": [0], "model": {"name": "floor", "version": "0"}}


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/score")
    def score():
        return _ANSWER

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    return app
