"""In-process benchmark: one 1-row POST /score through the RSGI bridge, without a socket.

It builds the app on the sample model, wraps it in `app.rsgi_bridge.RsgiBridge` as a
server worker does, and calls the bridge with a scope and protocol that stand in for
Granian's (the headers a client sends, the body already there). What it times is the
Python a request costs in a worker: environ building, the body await, the front,
scoring and the log line (written to /dev/null). Compare two checkouts by running
each one's copy; the figure is the median of --repeat rounds of --requests calls.
Usage: .venv/bin/python benchmarks/bench_bridge.py [--requests 5000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's app, whatever the venv has installed

ONE_ROW = json.dumps({"instances": [[0.0] * 64]}).encode()
API_KEY = "bench-key"


class Headers:
    """What the bridge reads of Granian's RSGIHeaders: `items()`, names in lower case."""

    def __init__(self, pairs):
        self._pairs = pairs

    def items(self):
        return list(self._pairs)


class Scope:
    proto = "http"
    http_version = "1.1"
    scheme = "http"
    method = "POST"
    path = "/score"
    query_string = ""
    server = "127.0.0.1:8080"
    client = "127.0.0.1:54321"

    def __init__(self):
        self.headers = Headers([
            ("host", "127.0.0.1:8080"),
            ("user-agent", "bench"),
            ("accept", "*/*"),
            ("content-type", "application/json"),
            ("x-api-key", API_KEY),
            ("content-length", str(len(ONE_ROW))),
        ])


class Protocol:
    """Granian's HTTP protocol object as the bridge uses it: the body, then one response."""

    def __init__(self, body: bytes):
        self._body = body
        self.status = None

    async def _read(self):
        return self._body

    def __call__(self):
        return self._read()

    def response_bytes(self, status, headers, body):
        self.status = status


async def rounds(bridge, requests: int, repeat: int) -> list[float]:
    scope = Scope()
    per_request = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(requests):
            protocol = Protocol(ONE_ROW)
            await bridge.__rsgi__(scope, protocol)
        per_request.append((time.perf_counter() - started) / requests)
        assert protocol.status == 200, protocol.status
    return per_request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    from app import create_app
    from app.request_log import JsonStreamHandler
    from app.rsgi_bridge import RsgiBridge
    from modelship.sample_model import train_digits_model

    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as scratch, \
            open("/dev/null", "w") as devnull:
        model_dir = train_digits_model(Path(scratch) / "model", version="1.0.0")
        logging.getLogger("app").addHandler(JsonStreamHandler(devnull))
        app = create_app({"MODEL_DIR": str(model_dir), "API_KEY": API_KEY})
        bridge = RsgiBridge(app)
        asyncio.run(rounds(bridge, 500, 1))  # warm-up
        figures = asyncio.run(rounds(bridge, args.requests, args.repeat))
    print(json.dumps({
        "checkout": str(ROOT),
        "median_us": round(statistics.median(figures) * 1e6, 2),
        "min_us": round(min(figures) * 1e6, 2),
        "rounds_us": [round(figure * 1e6, 2) for figure in figures],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
