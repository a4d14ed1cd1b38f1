"""Errors that the CLI turns into one stderr line and exit code 2."""


class UsageError(Exception):
    """Bad usage or bad input: reported as one line, exit code 2, no traceback.

    Options are named by placeholders, `UsageError("{o} must be at least 1", o="batch_size")`:
    a library caller reads the argument's name (`batch_size`), the command line its flag
    (`--batch-size`, from `for_cli`).
    """

    def __init__(self, message: str, **options: str):
        self.template, self.options = message, options
        super().__init__(self._render(lambda name: name))

    def _render(self, name) -> str:
        text = self.template
        for key, option in self.options.items():
            text = text.replace("{" + key + "}", name(option))
        return text

    def for_cli(self) -> str:
        return self._render(lambda name: "--" + name.replace("_", "-"))


def storage_error(exc: BaseException) -> str:
    """A short, credential-free description of a storage error."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"permission denied ({text[:300]})" if isinstance(exc, PermissionError) else text[:300]


def usage_cause(exc: BaseException) -> "UsageError | None":
    """The UsageError behind `exc`, also when Ray wrapped it in a task error.

    A permission error (storage access denied, on the driver or in a worker) counts as one:
    the fix is the user's (credentials, bucket policy), not a bug.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)  # Ray's task error wraps the worker's exception
        if inner is not None:
            exc = inner
            continue
        if isinstance(exc, UsageError):
            return exc
        if isinstance(exc, PermissionError):
            return UsageError(storage_error(exc))
        exc = exc.__cause__ or exc.__context__
    return None
