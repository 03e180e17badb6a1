"""A publisher that stops for good at one point of its upload: the tests stop it there.

Run as `python stalled_publisher.py URI ACCOUNT_URL ENDPOINT_URL MODEL_DIR VERSION FORCE
MARKER [WHERE]`. WHERE is `after-upload` (the default: the model is uploaded, metadata.json
not yet written) or `mid-upload` (a folder store's partial file is written but not yet
renamed into place). It touches MARKER there, then waits to be killed or terminated.
"""

import sys
import time
from pathlib import Path

from modelship import model_store

uri, account_url, endpoint_url, model_dir, version, force, marker = sys.argv[1:8]
where = sys.argv[8] if len(sys.argv) > 8 else "after-upload"
store = model_store.open_store(uri, account_url, endpoint_url)


def stall():
    Path(marker).touch()
    time.sleep(120)  # stopped long before this ends


if where == "after-upload":
    upload = store.upload_file

    def upload_then_stall(key, path, progress=None):
        upload(key, path, progress)
        stall()

    store.upload_file = upload_then_stall
else:
    class StallingProgress:
        """The upload reports its first block, written to the partial file: stall there."""

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

        def advance(self, _count):
            stall()

        def update(self, _done, _total):
            stall()

    model_store.console_progress = lambda _label, _size: StallingProgress()

model_store.publish(store, Path(model_dir), version, force=force == "force")
