"""What runs inside a serving image and what the host side shares with it.

Kept apart from the sample app (`app/`) and from the pipeline (`modelship/`), under a name of
its own: a project's own code is often called `app`, and the image's server and the host's
checks (the golden comparison, opening a model as it will be served) must import the same
code whatever the project calls its package. Nothing here may import `app` or `modelship`.
"""
