"""The one exception type raynlp raises for bad input.

Its message is a single line that names the thing that was wrong and how to fix it; the CLI prints it
without a traceback.
"""

from __future__ import annotations


class RaynlpError(Exception):
    """Bad input: a missing file, an unknown name, a wrong config field."""


def raynlp_error_behind(error: BaseException) -> RaynlpError | None:
    """The RaynlpError behind `error`, also when Ray wrapped it in a task or actor error."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, RaynlpError):
            return error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None
