"""Serving benchmark: the app under its production gunicorn configuration against its floor.

    .venv/bin/python benchmarks/bench_serving.py [--duration 10] [--connections 16]

Trains the sample digits model into a temporary directory, then on 127.0.0.1 only:
measures launch-to-ready of the app, drives it with `wrk` (1-row and 100-row POST
/score, API key on, request log and metrics on), drives the HTTP floor (the same
Flask + gunicorn configuration answering a constant JSON) the same way, and times
raw in-process onnxruntime predictions on the same rows. Prints every figure and the
issue's targets. It needs `wrk` (Debian package) and the `publish` extra. It must
never talk to another address and never leave a process behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO / "app" / "gunicorn_conf.py"
API_KEY = "bench-key-not-a-secret"
READY_TIMEOUT_SECONDS = 30

TARGET_FLOOR_SHARE = 0.80
TARGET_P99_MS = 10.0
TARGET_READY_SECONDS = 1.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A gunicorn master on 127.0.0.1, stopped (with its workers) on exit."""

    def __init__(self, wsgi_app: str, environment: dict, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            **environment,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "PYTHONPATH": str(REPO),
        }
        env.pop("METRICS_DIR", None)
        self._log = open(log_path, "wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), wsgi_app],
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
                raise RuntimeError(f"gunicorn exited early (code {self.process.returncode})")
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
    """Workers and threads as app/gunicorn_conf.py sets them in this environment."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    # wrk shares the machine's CPUs with the server; one thread drives 16 connections
    # at these rates and leaves the server more of them.
    parser.add_argument("--wrk-threads", type=int, default=1)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

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

        figures = {
            "cpus": os.cpu_count(),
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "gunicorn": gunicorn_sizing(),
        }
        ready_seconds = []
        for attempt in range(3):  # launch time is noisy; report the worst of three
            with Server("app:create_app()", app_environment, scratch / "ready.log") as server:
                ready_seconds.append(server.wait_ready())
        figures["app_launch_to_ready_s"] = ready_seconds

        for label, wsgi_app, environment in (
            ("floor", "benchmarks.serving_floor_app:create_app()", {}),
            ("app", "app:create_app()", app_environment),
        ):
            with Server(wsgi_app, environment, scratch / f"{label}.log") as server:
                server.wait_ready()
                for size, script in scripts.items():
                    # A short warm-up run so both servers start from warm workers.
                    run_wrk(f"{server.url}/score", script, 2, args.connections, args.wrk_threads)
                    figures[f"{label}_{size}_row"] = run_wrk(
                        f"{server.url}/score",
                        script,
                        args.duration,
                        args.connections,
                        args.wrk_threads,
                    )
            if label == "app":
                served = subprocess.run(
                    ["grep", "-c", '"route": "/score"', str(scratch / "app.log")],
                    capture_output=True, text=True,
                ).stdout.strip()
                figures["app_request_log_lines"] = int(served or 0)

        for size, batch in rows.items():
            figures[f"onnxruntime_{size}_row_predictions_per_s"] = raw_onnxruntime_rate(
                model_dir / "model.onnx", np.asarray(batch, dtype=np.float32)
            )

    report(figures)
    return 0


def report(figures: dict) -> None:
    print(json.dumps(figures, indent=2))
    print()
    print(
        f"gunicorn: {figures['gunicorn']}; wrk: {figures['connections']} connections, "
        f"{figures['wrk_threads']} thread(s); {figures['cpus']} CPUs shared by both"
    )
    for size in (1, 100):
        floor, app = figures[f"floor_{size}_row"], figures[f"app_{size}_row"]
        share = app["requests_per_second"] / floor["requests_per_second"]
        raw = figures[f"onnxruntime_{size}_row_predictions_per_s"]
        print(
            f"{size:>3}-row: app {app['requests_per_second']:8.0f} req/s "
            f"(p50 {app['p50_ms']:.2f} ms, p99 {app['p99_ms']:.2f} ms, non-2xx {app['non_2xx']})"
            f" | floor {floor['requests_per_second']:8.0f} req/s (p99 {floor['p99_ms']:.2f} ms)"
            f" | app/floor {share:.0%} | raw onnxruntime {raw:,.0f} rows/s on one thread"
        )
    one_row_share = (
        figures["app_1_row"]["requests_per_second"] / figures["floor_1_row"]["requests_per_second"]
    )
    worst_ready = max(figures["app_launch_to_ready_s"])
    checks = [
        (f"1-row rate >= {TARGET_FLOOR_SHARE:.0%} of floor", one_row_share >= TARGET_FLOOR_SHARE,
         f"{one_row_share:.1%}"),
        (f"1-row p99 <= {TARGET_P99_MS:g} ms", figures["app_1_row"]["p99_ms"] <= TARGET_P99_MS,
         f"{figures['app_1_row']['p99_ms']:.2f} ms"),
        (f"launch to /readyz 200 <= {TARGET_READY_SECONDS:g} s",
         worst_ready <= TARGET_READY_SECONDS, f"{worst_ready:.2f} s (worst of 3)"),
    ]
    for name, passed, value in checks:
        print(f"{'PASS' if passed else 'MISS'}  {name}: {value}")


if __name__ == "__main__":
    sys.exit(main())
