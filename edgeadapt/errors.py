"""Exceptions that carry a user-facing message naming the file and field at fault."""

from __future__ import annotations

from os import PathLike


class EdgeadaptError(Exception):
    """Base class for errors edgeadapt reports to users (the CLI exits with code 2)."""


class InputError(EdgeadaptError, ValueError):
    """A value, file or field handed to edgeadapt is invalid.

    `source` names the file or the parameter (by its Python name: the CLI shows the flag
    that sets it) and `field` the JSON path, npz key, CSV row
    or column, so the one-line message tells the user exactly where to look.
    """

    def __init__(
        self, message: str, *, source: str | PathLike[str] | None = None, field: str | None = None
    ) -> None:
        self.message = message
        self.source = None if source is None else str(source)
        self.field = field
        where = ": ".join(p for p in (self.source, field) if p)
        super().__init__(f"{where}: {message}" if where else message)

    def renamed(self, source: str) -> InputError:
        """The same error with `source` (a parameter's name) replaced, say by the
        command-line flag that set it."""
        return type(self)(self.message, source=source, field=self.field)


class MissingExtraError(EdgeadaptError, ImportError):
    """An optional backend or feature needs a package that is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the '{package}' package: pip install 'edgeadapt[{extra}]'"
        )
        self.package = package
        self.extra = extra


class UserCodeError(EdgeadaptError):
    """User code edgeadapt ran (a data loader script) raised: the message names the code
    and what it was doing; `user_traceback` is the user's traceback as Python prints it,
    from their own frames on (the CLI prints it once, then the one-line error)."""

    def __init__(self, message: str, user_traceback: str) -> None:
        super().__init__(message)
        self.user_traceback = user_traceback
