"""A bounded load generator for release tests: threads scoring through the edge until told.

Some clients keep their connection alive, some open a new one per request, as real clients
do; each answer is recorded by outcome (`ok`, `status 500`, `error`, and `wrong` where an
expected answer is given). Bounded: every client stops at `stop()`, after `max_seconds`, or
after `max_requests` in total, whichever comes first, so a hung release cannot hang a test.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter

import requests


class Load:
    def __init__(self, url: str, rows: list, expected: list | None = None,
                 keep_alive: int = 3, new_connection: int = 2, max_seconds: float = 300,
                 max_requests: int = 200_000):
        self.url, self.rows, self.expected = url, rows, expected
        self.outcomes: Counter = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + max_seconds
        self._max_requests = max_requests
        self._threads = [threading.Thread(target=self._run, args=(True, offset), daemon=True)
                         for offset in range(keep_alive)]
        self._threads += [threading.Thread(target=self._run, args=(False, keep_alive + offset),
                                           daemon=True) for offset in range(new_connection)]

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def _record(self, outcome: str, detail: str = "") -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            if outcome != "ok" and len(self.failures) < 20:
                self.failures.append(detail)

    def _going(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline and \
            self.total < self._max_requests

    def _run(self, keep_alive: bool, offset: int) -> None:
        indexes = itertools.cycle(range(len(self.rows)))
        for _ in range(offset):
            next(indexes)
        session = requests.Session()
        while self._going():
            index = next(indexes)
            headers = {} if keep_alive else {"Connection": "close"}
            try:
                answer = session.post(f"{self.url}/score", headers=headers, timeout=10,
                                      json={"instances": [self.rows[index]]})
            except requests.RequestException as error:
                self._record("error", f"{type(error).__name__}: {error}")
            else:
                if answer.status_code != 200:
                    self._record(f"status {answer.status_code}", answer.text[:200])
                elif self.expected is not None and \
                        answer.json().get("predictions") != [self.expected[index]]:
                    self._record("wrong", answer.text[:200])
                else:
                    self._record("ok")
            if not keep_alive:
                session.close()
                session = requests.Session()
        session.close()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def __exit__(self, *exc) -> None:
        self.stop()
