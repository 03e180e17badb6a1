"""Image benchmark: cold build, no-change rerun, code-only change, image size.

Runs the real tasks (`python -m invoke …`) against the local environment's Docker Engine and
registry (`invoke local.up` first) and prints one line per figure, with the targets:
  - no-change rerun of build + push: skipped, <= 2 s
  - code-only change: bytes pushed ~ the code layer (the model layer is not pushed again)
  - image size for the sample model: <= 350 MB
Usage: .venv/bin/python benchmarks/bench_image.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelship.release_record import load as read_record  # noqa: E402
from modelship.engine import docker_client  # noqa: E402

MARKER = ROOT / "app" / "_benchmark_change.py"


def invoke(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"`invoke {' '.join(args)}` failed: {done.stderr.strip()}")
    return elapsed, done.stdout


def layer_sizes(image_id: str) -> dict[str, int]:
    """Size of the layers made by the Dockerfile's COPY of the model and of the app code."""
    sizes = {}
    for layer in docker_client().images.get(image_id).history():
        created = layer.get("CreatedBy", "")
        if "COPY" in created or "file:" in created or "dir:" in created:
            if "/opt/model/" in created:
                sizes["model"] = layer["Size"]
            elif "/opt/service/app/" in created:
                sizes["code"] = layer["Size"]
    return sizes


def main() -> None:
    invoke("fetch-model")
    cold, _ = invoke("build", "--no-cache")
    record = read_record()
    size_mb = record.image.size_bytes / 1e6
    push_cold, _ = invoke("push")
    print(f"cold build (no layer cache): {cold:.1f} s; first push {push_cold:.1f} s, "
          f"{read_record().require_push('local').bytes_pushed / 1e6:.1f} MB uploaded")
    print(f"image size: {size_mb:.0f} MB (target <= 350 MB)")

    rerun_build, out_build = invoke("build")
    rerun_push, out_push = invoke("push")
    skipped = "up to date" in out_build and "up to date" in out_push
    print(f"no-change rerun of build + push: {rerun_build + rerun_push:.2f} s "
          f"(build {rerun_build:.2f} s, push {rerun_push:.2f} s), skipped={skipped} "
          "(target: skipped, <= 2 s)")

    MARKER.write_text("# a code-only change made by benchmarks/bench_image.py\n")
    try:
        changed_build, _ = invoke("build")
        changed_push, _ = invoke("push")
        record = read_record()
        sizes = layer_sizes(record.image.id)
        pushed = record.require_push("local").bytes_pushed
        print(f"code-only change: build {changed_build:.1f} s, push {changed_push:.2f} s, "
              f"{pushed / 1e3:.1f} kB uploaded; code layer {sizes.get('code', 0) / 1e3:.1f} kB, "
              f"model layer {sizes.get('model', 0) / 1e3:.1f} kB "
              f"(target: uploaded ~ code layer, model layer not pushed again)")
        print(json.dumps({"cold_build_s": round(cold, 1), "image_mb": round(size_mb),
                          "rerun_s": round(rerun_build + rerun_push, 2),
                          "code_change_uploaded_bytes": pushed,
                          "code_layer_bytes": sizes.get("code")}))
    finally:
        MARKER.unlink(missing_ok=True)
        invoke("build")


if __name__ == "__main__":
    main()
