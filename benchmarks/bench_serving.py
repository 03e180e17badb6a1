"""Serving benchmark: the app under its production server (Granian) against the gunicorn floor.

    .venv/bin/python benchmarks/bench_serving.py [--duration 10] [--rounds 3] [--json FILE]

Trains the sample digits model into a temporary directory, then on 127.0.0.1 only:
measures launch-to-ready of the app (`python -m app.serve`), drives it with `wrk`
(1-row and 100-row POST /score, and the same rows through the Open Inference Protocol's
POST /v2/models/<name>/infer, the two alternating in short runs on the same server, API
key on, request log and metrics on), drives the
HTTP floor (Flask answering a constant JSON under the project's previous gunicorn
configuration, benchmarks/gunicorn_floor_conf.py) the same way, alternating floor
and app for several rounds, then holds 16 slow clients open against the app (8 send
their headers one line per second, 8 their body one byte per second) while wrk
measures /healthz and 1-row /score. It also times raw in-process onnxruntime
predictions on the same rows. Prints each round and, against the issue's targets, the
medians. It needs `wrk` (Debian package), gunicorn (the `test` extra) and the
`publish` extra. It must never talk to another address and never leave a process behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO / "benchmarks" / "gunicorn_floor_conf.py"
FLOOR_COMMAND = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF),
                 "benchmarks.serving_floor_app:create_app()"]
APP_COMMAND = [sys.executable, "-m", "app.serve"]
API_KEY = "bench-key-not-a-secret"
READY_TIMEOUT_SECONDS = 30

TARGET_ONE_ROW_SHARE = 2.0
TARGET_HUNDRED_ROW_SHARE = 0.80
TARGET_P99_MS = 10.0
TARGET_READY_SECONDS = 1.0
TARGET_SLOW_CLIENT_P99_MS = 50.0
TARGET_V2_SHARE = 0.90  # v2 infer against /score, same rows, same server
SLOW_CLIENTS = 16


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A server (gunicorn or app.serve) on 127.0.0.1, stopped with its workers on exit."""

    def __init__(self, command: list, environment: dict, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            **environment,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "PYTHONPATH": str(REPO),
            "SHUTDOWN_DRAIN_SECONDS": "0",  # nothing routes to it: stop at once
        }
        env.pop("METRICS_DIR", None)
        self._log = open(log_path, "wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so stop() can signal the master and its workers
        )

    def wait_ready(self) -> float:
        """Seconds from launch to the first 200 from /readyz."""
        deadline = self.started + READY_TIMEOUT_SECONDS
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args} exited early (code {self.process.returncode})")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.005)
        raise RuntimeError(f"not ready within {READY_TIMEOUT_SECONDS} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


def wrk_script(directory: Path, name: str, body: str, headers: dict) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    path = directory / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, script: Path, duration: int, connections: int, threads: int) -> dict:
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
        + ["-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    )
    output = result.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    latency = {}
    percentiles = re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    for percent, value, unit in percentiles:
        latency[f"p{percent}_ms"] = float(value) * _UNITS_MS[unit]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors:.*", output)
    return {
        "requests_per_second": rate,
        **latency,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(0) if socket_errors else "",
    }


def gunicorn_sizing() -> str:
    """Workers and threads as the floor's gunicorn configuration sets them here."""
    code = (
        "import runpy, sys; s = runpy.run_path(sys.argv[1]); s['on_exit'](None); "
        "print(f\"{s['workers']} {s['worker_class']} workers x {s['threads']} threads\")"
    )
    environment = {key: value for key, value in os.environ.items() if key != "METRICS_DIR"}
    return subprocess.run(
        [sys.executable, "-c", code, str(GUNICORN_CONF)],
        capture_output=True, text=True, check=True, env=environment,
    ).stdout.strip()


def raw_onnxruntime_rate(model_path: Path, rows: np.ndarray, seconds: float = 2.0) -> float:
    """Predictions (rows) per second of one in-process session, configured as the app's."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name
    session.run(None, {input_name: rows})
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, {input_name: rows})
        calls += 1
    return calls * len(rows) / elapsed


def measure(command: list, environment: dict, targets: dict, log_path: Path, args) -> dict:
    """One server's wrk figures for every {key: (path, script)} target, from a fresh launch."""
    figures = {}
    with Server(command, environment, log_path) as server:
        server.wait_ready()
        for key, (path, script) in targets.items():
            # A short warm-up run so both servers start from warm workers.
            run_wrk(f"{server.url}{path}", script, 2, args.connections, args.wrk_threads)
            figures[key] = run_wrk(
                f"{server.url}{path}", script, args.duration, args.connections, args.wrk_threads
            )
    return figures


def measure_side_by_side(command: list, environment: dict, pairs: dict, log_path: Path,
                         args) -> dict:
    """Per {(key, key): ((path, script), (path, script))} pair, both targets' figures from
    short wrk runs that alternate between them (A B B A ...) on one fresh server.

    What the pair compares (v2 infer against /score) is then measured under the same
    load from the rest of a shared machine, whose drift over a run would otherwise fall
    on whichever came second. Rates are the mean of the slices, latencies their median.
    """
    seconds = max(1, round(args.duration / args.slices))
    figures = {}
    with Server(command, environment, log_path) as server:
        server.wait_ready()
        for keys, targets in pairs.items():
            for path, script in targets:
                run_wrk(f"{server.url}{path}", script, 2, args.connections, args.wrk_threads)
            slices = {key: [] for key in keys}
            for number in range(args.slices):
                order = list(zip(keys, targets))
                for key, (path, script) in order if number % 2 == 0 else reversed(order):
                    slices[key].append(run_wrk(f"{server.url}{path}", script, seconds,
                                               args.connections, args.wrk_threads))
            for key, runs in slices.items():
                figures[key] = {
                    "requests_per_second": statistics.mean(
                        run["requests_per_second"] for run in runs),
                    **{name: statistics.median(run[name] for run in runs)
                       for name in ("p50_ms", "p90_ms", "p99_ms")},
                    "non_2xx": sum(run["non_2xx"] for run in runs),
                    "socket_errors": "; ".join(run["socket_errors"] for run in runs
                                               if run["socket_errors"]),
                    "slices": [run["requests_per_second"] for run in runs],
                }
    return figures


def hold_slow_clients(port: int, body: bytes, stop: threading.Event) -> list:
    """SLOW_CLIENTS connections trickling in (half headers, half bodies); threads to join."""

    def trickle(pieces: list):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
                for piece in pieces:
                    if stop.wait(1):
                        return
                    connection.sendall(piece)
        except OSError:
            pass  # the server gave up on it (its timeouts): that is its job

    head = b"POST /score HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    header_lines = [head] + [b"X-Slow-%d: 1\r\n" % number for number in range(60)]
    body_bytes = [head + b"Content-Length: %d\r\n\r\n" % len(body)] + [
        body[index:index + 1] for index in range(len(body))
    ]
    threads = []
    for number in range(SLOW_CLIENTS):
        pieces = header_lines if number % 2 == 0 else body_bytes
        thread = threading.Thread(target=trickle, args=(pieces,), daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def slow_client_run(environment: dict, score_script: Path, scratch: Path, args) -> dict:
    """/healthz and 1-row /score figures while slow clients are held open."""
    healthz_script = scratch / "healthz.lua"
    healthz_script.write_text('wrk.method = "GET"\n')
    body = json.loads(score_script.read_text().splitlines()[1].split(" = ", 1)[1]).encode()
    figures = {}
    with Server(APP_COMMAND, environment, scratch / "slow.log") as server:
        server.wait_ready()
        stop = threading.Event()
        threads = hold_slow_clients(server.port, body, stop)
        try:
            time.sleep(2)  # let every slow client get its connection in
            for name, path, script in (("healthz", "/healthz", healthz_script),
                                       ("score", "/score", score_script)):
                figures[name] = run_wrk(f"{server.url}{path}", script, args.duration,
                                        args.connections, args.wrk_threads)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    # The machine is shared and noisy: floor and app alternate, round after round, and
    # the verdict is the median, so one slow slice of time decides nothing.
    parser.add_argument("--rounds", type=int, default=3, help="floor-then-app pairs to run")
    # wrk shares the machine's CPUs with the server; one thread drives 16 connections
    # at these rates and leaves the server more of them.
    parser.add_argument("--wrk-threads", type=int, default=1)
    # The app's /score and v2 infer runs alternate in this many slices of each run.
    parser.add_argument("--slices", type=int, default=4,
                        help="alternating /score and v2 runs making up each app run")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.slices < 1:
        parser.error("--slices must be at least 1")

    from modelship.sample_model import train_digits_model

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        scratch = Path(scratch)
        model_dir = train_digits_model(scratch / "model", version="bench")
        metadata = json.loads((model_dir / "metadata.json").read_text())
        golden = [sample["instance"] for sample in metadata["golden"]]
        rows = {1: [golden[0]], 100: [golden[i % len(golden)] for i in range(100)]}
        app_environment = {"MODEL_DIR": str(model_dir), "API_KEY": API_KEY}
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
        scripts = {
            size: wrk_script(scratch, f"rows{size}", json.dumps({"instances": batch}), headers)
            for size, batch in rows.items()
        }
        # The same rows through the Open Inference Protocol, data flat as its clients send it.
        v2_scripts = {
            size: wrk_script(scratch, f"v2-rows{size}", json.dumps({"inputs": [{
                "name": "input", "shape": [len(batch), len(batch[0])], "datatype": "FP32",
                "data": [value for row in batch for value in row]}]}), headers)
            for size, batch in rows.items()
        }
        v2_path = f"/v2/models/{metadata['name']}/infer"
        floor_targets = {size: ("/score", script) for size, script in scripts.items()}
        app_pairs = {(size, f"v2_{size}"): (("/score", scripts[size]), (v2_path, v2_scripts[size]))
                     for size in rows}

        figures = {
            "cpus": os.cpu_count(),
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "duration_s": args.duration,
            "gunicorn": gunicorn_sizing(),
        }
        ready_seconds = []
        for attempt in range(3):  # launch time is noisy; report the worst of three
            with Server(APP_COMMAND, app_environment, scratch / "ready.log") as server:
                ready_seconds.append(server.wait_ready())
        figures["app_launch_to_ready_s"] = ready_seconds

        rounds = []
        app_log = scratch / "app.log"
        for number in range(1, args.rounds + 1):
            floor = measure(FLOOR_COMMAND, {}, floor_targets, scratch / "floor.log", args)
            app = measure_side_by_side(APP_COMMAND, app_environment, app_pairs, app_log, args)
            served = subprocess.run(
                ["grep", "-c", '"route": "/score"', str(app_log)], capture_output=True, text=True
            ).stdout.strip()
            rounds.append({"floor": floor, "app": app, "app_request_log_lines": int(served or 0)})
            print(f"round {number}/{args.rounds}: " + "; ".join(
                f"{size}-row app/floor {app[size]['requests_per_second']:.0f}/"
                f"{floor[size]['requests_per_second']:.0f} req/s, v2/score "
                f"{app[f'v2_{size}']['requests_per_second']:.0f}/"
                f"{app[size]['requests_per_second']:.0f} req/s" for size in scripts
            ), file=sys.stderr, flush=True)
        figures["rounds"] = rounds
        figures["slow_clients"] = slow_client_run(
            app_environment, scripts[1], scratch, args
        )

        for size, batch in rows.items():
            figures[f"onnxruntime_{size}_row_predictions_per_s"] = raw_onnxruntime_rate(
                model_dir / "model.onnx", np.asarray(batch, dtype=np.float32)
            )

    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if report(figures) else 1


def report(figures: dict) -> bool:
    """Print each round and the medians; True when every target is met."""
    rounds = figures["rounds"]
    print(
        f"app: python -m app.serve (Granian); floor: gunicorn {figures['gunicorn']}; wrk: {figures['connections']} connections, "
        f"{figures['wrk_threads']} thread(s), {figures['duration_s']} s per run; "
        f"{figures['cpus']} CPUs shared by both; {len(rounds)} round(s) of floor then app"
    )
    medians = {}
    for size in (1, 100):
        print(f"{size}-row POST /score:")
        shares, p99s = [], []
        for number, round_figures in enumerate(rounds, 1):
            app, floor = round_figures["app"][size], round_figures["floor"][size]
            share = app["requests_per_second"] / floor["requests_per_second"]
            shares.append(share)
            p99s.append(app["p99_ms"])
            errors = f", non-2xx {app['non_2xx']}" if app["non_2xx"] else ""
            print(
                f"  round {number}: app {app['requests_per_second']:6.0f} req/s "
                f"(p50 {app['p50_ms']:5.2f} ms, p99 {app['p99_ms']:5.2f} ms{errors}) | "
                f"floor {floor['requests_per_second']:6.0f} req/s (p99 {floor['p99_ms']:5.2f} ms)"
                f" | app/floor {share:.0%}"
            )
        medians[size] = (statistics.median(shares), statistics.median(p99s))
        raw = figures[f"onnxruntime_{size}_row_predictions_per_s"]
        print(
            f"  median: app/floor {medians[size][0]:.0%}, app p99 {medians[size][1]:.2f} ms"
            f" | raw onnxruntime {raw:,.0f} rows/s on one thread"
        )
    v2_shares = {}
    for size in (1, 100):
        print(f"{size}-row POST /v2/models/<name>/infer against /score, alternating on one "
              "server:")
        shares = []
        for number, round_figures in enumerate(rounds, 1):
            v2, score = round_figures["app"][f"v2_{size}"], round_figures["app"][size]
            # Each v2 slice against the /score slice run next to it, then the median: the
            # machine's load changes from one slice to the next far more than within a pair.
            share = statistics.median(
                v2_rate / score_rate for v2_rate, score_rate in zip(v2["slices"], score["slices"]))
            shares.append(share)
            errors = f", non-2xx {v2['non_2xx']}" if v2["non_2xx"] else ""
            print(f"  round {number}: v2 {v2['requests_per_second']:6.0f} req/s "
                  f"(p50 {v2['p50_ms']:5.2f} ms, p99 {v2['p99_ms']:5.2f} ms{errors}) | "
                  f"/score {score['requests_per_second']:6.0f} req/s | v2//score {share:.0%} "
                  f"(median of {len(v2['slices'])} side-by-side slices)")
        v2_shares[size] = statistics.median(shares)
        print(f"  median: v2//score {v2_shares[size]:.0%}")
    logged = sum(round_figures["app_request_log_lines"] for round_figures in rounds)
    print(f"request log: {logged} /score lines written by the app")
    slow = figures["slow_clients"]
    print(f"with {SLOW_CLIENTS} slow clients held open (headers 1 line/s, body 1 byte/s):")
    for name, run in slow.items():
        print(f"  {name}: {run['requests_per_second']:6.0f} req/s, p50 {run['p50_ms']:.2f} ms, "
              f"p99 {run['p99_ms']:.2f} ms, non-2xx {run['non_2xx']}")
    print("launch to /readyz 200: " + ", ".join(
        f"{seconds:.2f} s" for seconds in figures["app_launch_to_ready_s"]))

    one_row_share, one_row_p99 = medians[1]
    hundred_row_share = medians[100][0]
    worst_ready = max(figures["app_launch_to_ready_s"])
    worst_slow_p99 = max(run["p99_ms"] for run in slow.values())
    checks = [
        (f"1-row rate >= {TARGET_ONE_ROW_SHARE:g}x floor", one_row_share >= TARGET_ONE_ROW_SHARE,
         f"{one_row_share:.2f}x (median of {len(rounds)})"),
        (f"100-row rate >= {TARGET_HUNDRED_ROW_SHARE:.0%} of floor",
         hundred_row_share >= TARGET_HUNDRED_ROW_SHARE,
         f"{hundred_row_share:.1%} (median of {len(rounds)})"),
        (f"1-row p99 <= {TARGET_P99_MS:g} ms", one_row_p99 <= TARGET_P99_MS,
         f"{one_row_p99:.2f} ms (median of {len(rounds)})"),
        (f"launch to /readyz 200 <= {TARGET_READY_SECONDS:g} s",
         worst_ready <= TARGET_READY_SECONDS, f"{worst_ready:.2f} s (worst of 3)"),
        (f"p99 with {SLOW_CLIENTS} slow clients <= {TARGET_SLOW_CLIENT_P99_MS:g} ms",
         worst_slow_p99 <= TARGET_SLOW_CLIENT_P99_MS
         and all(run["non_2xx"] == 0 for run in slow.values()),
         f"{worst_slow_p99:.2f} ms (worse of /healthz and /score)"),
    ]
    for size in (1, 100):
        v2_errors = sum(round_figures["app"][f"v2_{size}"]["non_2xx"] for round_figures in rounds)
        checks.append((
            f"{size}-row v2 infer rate >= {TARGET_V2_SHARE:.0%} of /score",
            v2_shares[size] >= TARGET_V2_SHARE and v2_errors == 0,
            f"{v2_shares[size]:.1%} (median of {len(rounds)}), non-2xx {v2_errors}"))
    for name, passed, value in checks:
        print(f"{'PASS' if passed else 'MISS'}  {name}: {value}")
    return all(passed for _, passed, _ in checks)


if __name__ == "__main__":
    sys.exit(main())
