"""modelship: carry an AI app (Flask code + an ONNX model) from a git commit to a running service.

One module per pipeline stage; `tasks.py` at the repository root is the thin Invoke front end.
"""

__version__ = "0.1.0"
