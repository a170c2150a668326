"""User-facing errors: one line that says what is wrong and what to do, never a traceback."""

from __future__ import annotations

import errno
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


#: What to do about an OS error nobody caught closer to where it happened, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space and run again",
    errno.EDQUOT: "the disk quota is used up: free some space and run again",
    errno.EACCES: "permission denied: check the path, or choose a folder you can write to",
    errno.EPERM: "operation not permitted: check the path, or choose a folder you can write to",
    errno.EROFS: "the file system is read-only: choose another folder",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "it is a folder, not a file: check the path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.ELOOP: "too many symbolic links (a link loop?): check the path",
    errno.EIO: "input/output error (a failing disk or a network file system gone away?)",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and run again",
    errno.ENOMEM: "out of memory",
}


def os_error_message(exc: OSError) -> str:
    """One line for an OS error: which file, what went wrong, what to do."""
    if exc.errno == errno.ENOSPC:  # the message people know; kept as it was
        return f"disk full while writing {exc.filename or 'output'}: free some space and run again"
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
    what = _OS_ADVICE.get(exc.errno or -1) or exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {what}" if where else what


def friendly_errors(func: F) -> F:
    """Turn HaruhiError, Ctrl-C and OS errors (disk full, permissions, a path that went away) into one-line
    messages and exit codes for CLI entry points."""

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
            fail(os_error_message(exc))
            raise SystemExit(1) from None

    return wrapper  # type: ignore[return-value]
