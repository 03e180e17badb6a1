"""The gunicorn configuration the service ran under before Granian: the benchmark's floor.

bench_serving.py runs the floor app (Flask answering a constant JSON) with it, so
"before" keeps meaning what it meant: one single-threaded gthread worker per CPU,
preloaded, keep-alive 5 s. It is not the serving configuration any more (that is
app/serve.py); it must not be changed to flatter either side, and must never bind
anything but the address it is given.
"""

import gc
import os
import shutil
import tempfile
from pathlib import Path

wsgi_app = "app:create_app()"

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"


def _default_workers() -> int:
    # One single-threaded worker per CPU: scoring is CPU-bound Python holding the GIL,
    # so more processes or threads than CPUs only add context switches and cache
    # misses (measured with benchmarks/bench_serving.py). A container's CPU quota is
    # not visible here, so cap the guess and let the manifest set WEB_CONCURRENCY to
    # match its CPU limit.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cpus or 1, 4)


workers = int(os.environ.get("WEB_CONCURRENCY") or _default_workers())
# gthread even with one thread: unlike the sync worker it keeps connections alive, so
# a client (or ingress) does not pay a TCP handshake per request.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS") or 1)

# The service loaded its app in the master before forking and opened the model in
# each worker; the floor keeps the preload.
preload_app = True

timeout = 30
graceful_timeout = 20  # below Kubernetes' default 30 s termination grace period
keepalive = 5

# Reject oversized request lines and headers before the app sees them; bodies are
# bounded by the app's MAX_CONTENT_LENGTH (413).
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190

accesslog = None  # the app writes its own JSON line per request
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")

# Heartbeat files on tmpfs: a worker's heartbeat on a slow overlay disk can stall
# and get a healthy worker killed.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Recent gunicorn versions open an admin socket under $HOME; nothing uses it, and a
# read-only or missing home directory in the container must not matter.
# (Older gunicorn versions ignore settings they do not know.)
control_socket_disable = True

# Workers share their metric counters through files in one directory (app.metrics).
# It must exist before the app is preloaded, which happens before any server hook
# runs, hence here. A directory the operator chose is emptied of old counters; one
# we made is removed when the master exits.
_METRICS_FILE_GLOB = "worker-*.metrics"
if os.environ.get("METRICS_DIR"):
    _made_metrics_dir = None
    for stale in Path(os.environ["METRICS_DIR"]).glob(_METRICS_FILE_GLOB):
        stale.unlink(missing_ok=True)
else:
    _made_metrics_dir = tempfile.mkdtemp(prefix="modelship-metrics-")
    os.environ["METRICS_DIR"] = _made_metrics_dir


def post_worker_init(worker):
    # (The service opened its model here; the floor app has none.) Everything alive now (Flask, numpy, the session) lives as long as the worker:
    # keep it out of the collector's full passes, which otherwise walk it all again
    # every few thousand requests.
    gc.freeze()


def on_exit(server):
    if _made_metrics_dir:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)
