"""User-facing errors: one line that says what is wrong and what to do, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class HaruhiError(Exception):
    """An error a user can act on. Its message is the whole story; commands print it and exit 1."""

    exit_code = 1


class ModelError(HaruhiError):
    """A model cannot be used (missing, not a GGUF, damaged, too big, busy); the message says what to do."""


class Cancelled(HaruhiError):
    """The user pressed Ctrl-C; work in flight was saved or rolled back."""

    exit_code = 130


def fail(message: str) -> None:
    """Print a one-line error to stderr and exit non-zero."""
    print(f"error: {message}", file=sys.stderr)


def friendly_errors(func: F) -> F:
    """Turn HaruhiError, Ctrl-C and disk-full into one-line messages and exit codes for CLI entry points."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except HaruhiError as exc:
            fail(str(exc))
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:
            fail("interrupted (Ctrl-C); nothing half-written was left behind")
            raise SystemExit(130) from None
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC
                fail(f"disk full while writing {exc.filename or 'output'}: free some space and run again")
                raise SystemExit(1) from None
            raise

    return wrapper  # type: ignore[return-value]
