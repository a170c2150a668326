"""The error wrapper every command runs under: one line and a non-zero exit for what a user can act on."""

from __future__ import annotations

import errno
import os

import pytest

from haruhi_tui.core.errors import friendly_errors


def _exit_of(error: BaseException, capsys) -> tuple[int, str]:
    @friendly_errors
    def command() -> None:
        raise error

    with pytest.raises(SystemExit) as caught:
        command()
    return caught.value.code, capsys.readouterr().err


@pytest.mark.parametrize("error, expected", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out.json"), "disk full while writing /data/out.json"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/root/x"), "/root/x: permission denied"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/cd/x"), "/mnt/cd/x: the file system is read-only"),
    (NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), "a/b"), "a/b: a part of the path is a file"),
    (OSError(errno.EIO, os.strerror(errno.EIO), "/nfs/x"), "/nfs/x: input/output error"),
    (OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/a", None, "/b"), "/a -> /b: Invalid cross-device link"),
    (OSError("something odd"), "something odd"),
])
def test_an_os_error_nobody_caught_is_one_line(capsys, error, expected):
    """Only ENOSPC was turned into a line; every other OSError was a traceback."""
    code, err = _exit_of(error, capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err


def test_bugs_still_show_their_traceback(capsys):
    @friendly_errors
    def command() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        command()
