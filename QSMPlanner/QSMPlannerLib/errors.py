"""The one project exception for bad input; the CLI turns it into exit status 2."""


class InputError(Exception):
    """Bad input: the message names the file (when there is one) and the problem."""

    def __init__(self, problem: str, path=None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ProcessingError(Exception):
    """A computation that failed its own checks (e.g. a registration that did not converge)."""
