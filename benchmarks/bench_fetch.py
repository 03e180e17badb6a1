"""Benchmark: fetch-model throughput against a plain single-stream curl, Azure and S3.

Starts its own Azurite and moto S3 server on 127.0.0.1, publishes a random model of
--size-mib (256 by default), then in the same run measures curl with a SAS / presigned URL,
the SDK's default download (Azure), `az storage blob download` when an Azure CLI is given
(`--az`, or `az` on PATH), `modelship.model_store.fetch` from scratch (download + sha256 +
atomic rename) and a re-fetch of the unchanged model. Prints MB/s, the ratio to curl and the
targets: fetch >= 0.9x curl, re-fetch <= 0.5 s. Usage:

    .venv/bin/python benchmarks/bench_fetch.py [--size-mib 256] [--repeat 3] [--az PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelship import model_store  # noqa: E402
from tests.support import emulators  # noqa: E402


def median_seconds(action, repeat: int, before=None) -> float:
    timings = []
    for _ in range(repeat):
        if before:
            before()
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def make_model(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    (folder / "model.onnx").write_bytes(data)
    (folder / "metadata.json").write_text(json.dumps({
        "name": "bench", "version": "1", "sha256": hashlib.sha256(data).hexdigest(),
        "size": size, "created": datetime.now(timezone.utc).isoformat(), "input": {},
    }))
    return folder


def curl(url: str, output: Path) -> None:
    subprocess.run(["curl", "-sS", "--fail", "-o", str(output), url], check=True)


def report(name: str, size: int, seconds: float, baseline: float | None) -> None:
    ratio = f"  {baseline / seconds:.2f}x curl" if baseline else ""
    print(f"  {name:44} {size / seconds / 1e6:7.0f} MB/s  ({seconds:.3f} s){ratio}")


def timed(action, before=None) -> float:
    if before:
        before()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_store(label, store, size, repeat, work: Path, curl_url, others=None):
    target = work / f"fetch-{label}"
    scratch = work / "scratch.bin"
    fresh = lambda: shutil.rmtree(target, ignore_errors=True)  # noqa: E731
    fetch = lambda: model_store.fetch(store, target)  # noqa: E731
    get_with_curl = lambda: curl(curl_url, scratch)  # noqa: E731
    get_with_curl()  # warm the server's cache the same way for every client
    print(f"{label}: {size / 2**20:.0f} MiB, {repeat} rounds, curl and fetch-model "
          "alternating within each round (the machine is shared: ratios per round)")
    curl_timings, fetch_timings, ratios = [], [], []
    for _ in range(repeat):
        curl_seconds = timed(get_with_curl)
        fetch_seconds = timed(fetch, fresh)
        curl_timings.append(curl_seconds)
        fetch_timings.append(fetch_seconds)
        ratios.append(curl_seconds / fetch_seconds)
    curl_median = statistics.median(curl_timings)
    report("curl, one stream (baseline)", size, curl_median, None)
    for name, action in (others or {}).items():
        report(name, size, median_seconds(action, repeat), curl_median)
    report("fetch-model (download + sha256 + rename)", size, statistics.median(fetch_timings),
           curl_median)
    refetch = median_seconds(fetch, repeat)
    ratio = statistics.median(ratios)
    print(f"  {'fetch/curl throughput per round':44} " + ", ".join(f"{r:.2f}x" for r in ratios))
    print(f"  {'re-fetch of the unchanged model':44} {refetch:.3f} s")
    print(f"  targets: fetch >= 0.9x curl (median of rounds): "
          f"{'met' if ratio >= 0.9 else 'MISSED'} ({ratio:.2f}x); "
          f"re-fetch <= 0.5 s: {'met' if refetch <= 0.5 else 'MISSED'} ({refetch:.3f} s)")
    scratch.unlink(missing_ok=True)


def az_cli_download(az: str, azurite, work: Path):
    """`az storage blob download` (what the seed's pipeline ran) against Azurite."""
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={azurite.extra['account']};"
        f"AccountKey={azurite.extra['key']};BlobEndpoint={azurite.url};"
    )
    environment = {
        **os.environ,
        # Azurite's public development key, passed the way a pipeline would: not argv.
        "AZURE_STORAGE_CONNECTION_STRING": connection,
        # Nothing may leave this machine: no telemetry, no survey or upgrade checks.
        "AZURE_CORE_COLLECT_TELEMETRY": "false",
        "AZURE_CORE_SURVEY_MESSAGE": "false",
        "AZURE_CONFIG_DIR": str(work / "az-config"),
    }

    def download():
        subprocess.run(
            [az, "storage", "blob", "download", "--container-name", "models",
             "--name", "bench/1/model.onnx", "--file", str(work / "az.bin"),
             "--no-progress", "--only-show-errors", "--output", "none"],
            check=True, env=environment,
        )

    return download


def bench_azure(size, repeat, work, model_dir, az=None):
    from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

    azurite = emulators.start_azurite()
    try:
        store = model_store.open_store("az://models/bench", azurite.url)
        model_store.publish(store, model_dir, "1")
        sas = generate_blob_sas(
            azurite.extra["account"], "models", "bench/1/model.onnx",
            account_key=azurite.extra["key"], permission=BlobSasPermissions(read=True),
            expiry=datetime.now(timezone.utc) + timedelta(hours=1),
        )
        credential = {"account_name": azurite.extra["account"], "account_key": azurite.extra["key"]}
        blob = BlobServiceClient(azurite.url, credential=credential).get_blob_client(
            "models", "bench/1/model.onnx")

        def sdk_default():
            with open(work / "sdk.bin", "wb") as handle:
                blob.download_blob().readinto(handle)

        others = {"SDK, default settings": sdk_default}
        if az:
            others["az storage blob download"] = az_cli_download(az, azurite, work)
        bench_store("Azure Blob on Azurite", store, size, repeat, work,
                    f"{azurite.url}/models/bench/1/model.onnx?{sas}", others)
    finally:
        azurite.stop()


def bench_s3(size, repeat, work, model_dir):
    import boto3

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    moto = emulators.start_moto()
    try:
        client = boto3.client("s3", endpoint_url=moto.url)
        client.create_bucket(Bucket="models")
        store = model_store.open_store("s3://models/bench", endpoint_url=moto.url)
        model_store.publish(store, model_dir, "1")
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": "models", "Key": "bench/1/model.onnx"}, ExpiresIn=3600)
        bench_store("S3 on moto_server", store, size, repeat, work, url)
    finally:
        moto.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("azure", "s3"))
    parser.add_argument("--az", default=shutil.which("az"),
                        help="an Azure CLI to compare with (default: az on PATH, if any)")
    arguments = parser.parse_args()
    size = arguments.size_mib * 2**20
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as folder:
        work = Path(folder)
        model_dir = make_model(work / "model", size)
        if arguments.only in (None, "azure"):
            bench_azure(size, arguments.repeat, work, model_dir, arguments.az)
        if arguments.only in (None, "s3"):
            bench_s3(size, arguments.repeat, work, model_dir)


if __name__ == "__main__":
    main()
