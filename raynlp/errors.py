"""The one exception type raynlp raises for bad input.

Its message is a single line that names the thing that was wrong and how to fix it; the CLI prints it
without a traceback.
"""


class RaynlpError(Exception):
    """Bad input: a missing file, an unknown name, a wrong config field."""
