"""A test-only worker app whose workers pause in the last gap of their start-up.

`python -m tests.support.held_start_app` runs `app.serve` as the container does, with
the real app behind the real bridge. Each worker, once Granian has installed its stop
signal handlers and before its event loop runs (the bridge's `__rsgi_init__`), writes
its pid into HELD_WORKERS_DIR and waits there until the test creates the file
`release` in it (30 s at most). A signal sent meanwhile arrives in exactly the gap
where uvloop used to lose it, which otherwise takes a loaded machine and luck to hit.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from app import create_app, serve
from app.rsgi_bridge import RsgiBridge

RELEASE_FILE_NAME = "release"
LONGEST_HOLD_SECONDS = 30


class HeldBridge(RsgiBridge):
    def __rsgi_init__(self, loop) -> None:
        super().__rsgi_init__(loop)
        held = Path(os.environ["HELD_WORKERS_DIR"])
        (held / str(os.getpid())).touch()
        deadline = time.monotonic() + LONGEST_HOLD_SECONDS
        while not (held / RELEASE_FILE_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def worker_app():
    return HeldBridge(create_app())


if __name__ == "__main__":
    serve.main("tests.support.held_start_app:worker_app")
