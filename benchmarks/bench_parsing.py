"""Request parsing benchmark: /score's fast path for plain tables against the general one.

    .venv/bin/python benchmarks/bench_parsing.py [--repeat 7]

Times, in process, what turns a request body into the model's input array:
`app.instances.numeric_table` (a byte scan, then simdjson straight into an array) and
the general path it stands in for on plain tables (orjson to Python lists, the checks
on them, numpy conversion), on bodies of 1 and 100 rows of 64 features. Prints the best
of --repeat runs of each, and their ratio; the fast path has to stay under half the
general one's time at 100 rows, or it is not worth its code.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.instances import decode_json, numeric_table, parse_instances  # noqa: E402
from app.model import InputSpec  # noqa: E402

FEATURES = 64
MAX_BATCH = 1000
TARGET_HUNDRED_ROW_SHARE = 0.5


def body_of(rows: int, generator: random.Random) -> bytes:
    table = [[float(generator.randint(0, 16)) for _ in range(FEATURES)] for _ in range(rows)]
    return json.dumps({"instances": table}).encode()


def best_microseconds(call, repeat: int, number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    spec = InputSpec("bench", FEATURES, np.dtype(np.float32))
    generator = random.Random(1)
    shares = {}
    for rows, number in ((1, 20_000), (100, 1_000)):
        body = body_of(rows, generator)
        fast_answer = numeric_table(body, spec, MAX_BATCH)
        general_answer = parse_instances(decode_json(body), spec, MAX_BATCH)
        assert fast_answer is not None and np.array_equal(fast_answer, general_answer)
        fast = best_microseconds(lambda: numeric_table(body, spec, MAX_BATCH), args.repeat,
                                 number)
        general = best_microseconds(
            lambda: parse_instances(decode_json(body), spec, MAX_BATCH), args.repeat, number
        )
        shares[rows] = fast / general
        print(f"{rows:3d} row(s), {len(body):6,d} bytes: fast path {fast:7.1f} us, "
              f"general path {general:7.1f} us, fast/general {fast / general:.0%}")
    met = shares[100] <= TARGET_HUNDRED_ROW_SHARE
    print(f"{'PASS' if met else 'MISS'}  100-row fast path <= {TARGET_HUNDRED_ROW_SHARE:.0%} "
          f"of the general path: {shares[100]:.0%}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
