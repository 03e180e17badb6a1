"""Gunicorn settings for the serving container: `gunicorn -c app/gunicorn_conf.py`.

Everything that differs between environments comes from environment variables, so
one image runs anywhere. This file only configures the server; it must never import
the app or load the model (that happens in each worker, see `preload_app`).
"""

import os

wsgi_app = "app:create_app()"

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"


def _default_workers() -> int:
    # CPUs this process may run on; a container's CPU quota is not visible here, so
    # cap the guess and let the manifest set WEB_CONCURRENCY to match its CPU limit.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(2 * (cpus or 1) + 1, 4)


workers = int(os.environ.get("WEB_CONCURRENCY") or _default_workers())
# Threads let a worker hold keep-alive connections and overlap slow clients; one
# onnxruntime session is safe to call from several threads.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS") or 2)

# Each worker loads its own model after the fork. onnxruntime starts thread pools
# when a session is created, and threads do not survive fork(): a session built in
# the master and inherited by workers can hang on locks held by threads that no
# longer exist. The price is one model copy per worker, fine for models this size.
preload_app = False

timeout = 30
graceful_timeout = 20  # below Kubernetes' default 30 s termination grace period
keepalive = 5

# Reject oversized request lines and headers before the app sees them; bodies are
# bounded by the app's MAX_CONTENT_LENGTH.
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
