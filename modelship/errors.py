"""The one exception type the pipeline raises for expected failures.

A `PipelineError` carries what went wrong and what the user should do about it; the Invoke
front end turns it into a single line and a non-zero exit. It must never carry a secret.
"""


class PipelineError(Exception):
    """An expected failure: bad input, an unreachable service, a refused credential."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem} {self.fix}".strip() if self.fix else self.problem
