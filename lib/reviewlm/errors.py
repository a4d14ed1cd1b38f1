"""Errors that the CLI turns into one stderr line and exit code 2."""


class UsageError(Exception):
    """Bad usage or bad input: reported as one line, exit code 2, no traceback."""


def usage_cause(exc: BaseException) -> "UsageError | None":
    """The UsageError behind `exc`, also when Ray wrapped it in a task error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UsageError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None
