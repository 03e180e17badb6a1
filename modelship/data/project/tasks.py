"""This repository's Invoke tasks: the toolkit's own collection, as in any project using it.

The tasks live in the installable package (`modelship.tasks`), so a project that
`pip install`s the toolkit gets the same file from `modelship init`; keep this file an import.
"""

from modelship.tasks import namespace  # noqa: F401  (invoke loads the collection from here)
