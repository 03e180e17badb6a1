"""Inner-loop benchmark: how long `invoke deploy --env=local` takes when little has changed.

In a fresh clone of this checkout (committed files only), with the local services up and the
base image cached, it times:
  - T0: the first deploy (a registry repository and model folder of its own, so nothing is
    found already built or pushed);
  - no-change deploy, then a code-only change (one line in app/) and a model-only change (a
    newly published version), each median of --rounds runs.
Targets: no-change <= 5% of T0; code-only <= 40% of T0; model-only <= 40% of T0.

The clone deploys as its own app (`bench-api`, edge port 18180), so the project's own local
deployment is left alone. Every process and container it starts is stopped at the end;
local services it had to start are stopped too.
Usage: .venv/bin/python benchmarks/bench_inner_loop.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"no-change": 0.05, "code-only": 0.40, "model-only": 0.40}


def environment(clone: Path) -> dict:
    """The clone's code wins over the editable install; the local registry's login (kept in
    the checkout that started the registry) is handed over as an agent's would be."""
    environ = dict(os.environ, PYTHONPATH=str(clone))
    login = ROOT / ".local" / "registry" / "credentials.json"
    if login.is_file():
        data = json.loads(login.read_text())
        environ.update(REGISTRY_USERNAME=data["username"], REGISTRY_PASSWORD=data["password"])
    return environ


def run(cwd: Path, *args: str, config: Path | None = None, check: bool = True) -> tuple[
        float, str]:
    argv = [sys.executable, "-m", "invoke"] + (["-f", str(config)] if config else []) + list(args)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                          env=environment(cwd))
    elapsed = time.perf_counter() - started
    if check and done.returncode != 0:
        sys.exit(f"`invoke {' '.join(args)}` in {cwd} failed:\n{done.stdout[-3000:]}\n"
                 f"{done.stderr[-2000:]}")
    return elapsed, done.stdout


def stage_seconds(output: str) -> str:
    """The stage table's rows, folded onto one line: 'fetch-model up to date 0.2, ...'."""
    if "stage " not in output:
        return ""
    rows = output[output.index("stage "):].splitlines()[1:7]
    return "; ".join(" ".join(row.split()) for row in rows)


def retrained_model(folder: Path, round_number: int) -> tuple[Path, Path]:
    """A digits classifier with another regularisation per round: new bytes, a real model
    change, published the way a data scientist would (`--model`, `--samples`)."""
    import numpy as np
    import onnxruntime
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    features = digits.data.astype(np.float32)
    classifier = LogisticRegression(C=1.0 / (round_number + 1), max_iter=1000)
    classifier.fit(features[:1500], digits.target[:1500])
    onnx = convert_sklearn(classifier, initial_types=[("input", FloatTensorType([None, 64]))],
                           options={id(classifier): {"zipmap": False}})
    model = folder / "model.onnx"
    model.write_bytes(onnx.SerializeToString())
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rows = features[1500:1505]
    labels = session.run(None, {"input": rows})[0]
    samples = folder / "samples.json"
    samples.write_text(json.dumps({"instances": rows.tolist(),
                                   "expected": [int(label) for label in labels]}))
    return model, samples


def bench_config(folder: Path, suffix: str) -> Path:
    config = folder / "bench.yaml"
    config.write_text(json.dumps({"modelship": {
        "app_name": "bench-api",
        "environments": {"local": {
            "model_store": {"uri": f"az://models/bench-{suffix}"},
            "image": {"repository": f"bench-api-{suffix}"},
            "deployment": {"port": 18180, "smoke_local_port": 18181},
        }},
    }}))
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="modelship-inner-loop-"))
    clone = scratch / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    suffix = uuid.uuid4().hex[:8]
    config = bench_config(scratch, suffix)
    # The services are started from the project, so their state (the registry's login)
    # stays there; the clone is a second checkout on the same machine.
    _, up = run(ROOT, "local.up")
    started_services = "started (pid" in up or "started on" in up
    try:
        run(clone, "model.publish", config=config)
        t0, output = run(clone, "deploy", "--env=local", config=config)
        print(f"T0, first deploy in a fresh clone: {t0:.1f} s ({stage_seconds(output)})")
        figures: dict[str, list[float]] = {name: [] for name in TARGETS}
        routes = clone / "app" / "routes.py"
        for round_number in range(1, options.rounds + 1):
            seconds, output = run(clone, "deploy", "--env=local", config=config)
            figures["no-change"].append(seconds)
            print(f"  round {round_number} no-change: {seconds:.1f} s ({stage_seconds(output)})")

            # A line of code, not a comment: it runs whenever app.routes is imported.
            routes.write_text(routes.read_text() + f"INNER_LOOP_ROUND = {round_number}\n")
            seconds, output = run(clone, "deploy", "--env=local", config=config)
            figures["code-only"].append(seconds)
            print(f"  round {round_number} code-only: {seconds:.1f} s ({stage_seconds(output)})")

            model, samples = retrained_model(scratch / f"model-{round_number}", round_number)
            run(clone, "model.publish", "--model", str(model), "--samples", str(samples),
                config=config)
            seconds, output = run(clone, "deploy", "--env=local", config=config)
            figures["model-only"].append(seconds)
            print(f"  round {round_number} model-only: {seconds:.1f} s "
                  f"({stage_seconds(output)})")
        failed = False
        print(f"T0 {t0:.1f} s")
        for name, target in TARGETS.items():
            median = statistics.median(figures[name])
            ratio = median / t0
            verdict = "met" if ratio <= target else "MISSED"
            failed |= ratio > target
            print(f"{name}: median {median:.1f} s = {ratio:.1%} of T0 "
                  f"(target <= {target:.0%}): {verdict}")
    finally:
        _remove_bench_deployment(clone, config)
        if started_services:
            run(ROOT, "local.down", check=False)
    sys.exit(1 if failed else 0)


def _remove_bench_deployment(clone: Path, config: Path) -> None:
    """Leave services someone else started running; take away only the bench's app."""
    code = ("import invoke, sys; from modelship.settings import load_settings; "
            "from modelship.engine import docker_client; from modelship import local_runtime; "
            "c = invoke.Config(project_location='.', runtime_path=sys.argv[1]); "
            "c.load_project(); c.load_runtime(); "
            "local_runtime.remove(docker_client(), load_settings(c, 'local'))")
    subprocess.run([sys.executable, "-c", code, str(config)], cwd=clone, check=False,
                   env=environment(clone))


if __name__ == "__main__":
    main()
