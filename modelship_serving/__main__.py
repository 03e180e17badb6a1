"""`python -m modelship_serving`: the image's server for a project's own app (serve.py)."""

from modelship_serving.serve import main

main()
