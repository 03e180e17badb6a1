"""A publisher that stops for good once the model is uploaded: the tests kill it there.

Run as `python stalled_publisher.py URI ACCOUNT_URL ENDPOINT_URL MODEL_DIR VERSION FORCE
MARKER`; it touches MARKER after the model upload, then waits to be killed before it
writes metadata.json or moves latest.
"""

import sys
import time
from pathlib import Path

from modelship import model_store

uri, account_url, endpoint_url, model_dir, version, force, marker = sys.argv[1:8]
store = model_store.open_store(uri, account_url, endpoint_url)
upload = store.upload_file


def upload_then_stall(key, path, progress=None):
    upload(key, path, progress)
    Path(marker).touch()
    time.sleep(120)  # killed long before this ends


store.upload_file = upload_then_stall
model_store.publish(store, Path(model_dir), version, force=force == "force")
