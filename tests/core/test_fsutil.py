"""Temp files beside their targets: named after their owner's pid, swept once it is gone, never while it runs;
outputs get the usual permissions; a folder that cannot hold files is named for what it is."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from haruhi_tui.core.errors import HaruhiError
from haruhi_tui.core.fsutil import check_writable, make_public, remove_stale_temps, replace_together, write_text

#: A writer killed with SIGKILL in the middle of each of our writes: a file, a set of files, a folder.
KILLED_WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from haruhi_tui.core.fsutil import atomic_open, replace_together, temp_dir
    out = Path(sys.argv[1])
    with atomic_open(out / "model.json") as fh:
        fh.write("{")
        with replace_together(out, ["a.json"]) as stage:
            (stage / "a.json").write_text("{")
            temp_dir(out / "checkpoint")
            print("ready", flush=True)
            sys.stdin.read()
""")


def test_what_a_killed_writer_left_is_swept_by_the_next_writer(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".model.json.notes").write_text("a user's file that only looks like ours", encoding="utf-8")
    (out / ".model.json.123.bak").write_text("not a temp ending", encoding="utf-8")
    root = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out)], cwd=root, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    assert writer.stdout.readline().strip() == "ready"
    left = sorted(p.name for p in out.iterdir() if str(writer.pid) in p.name)
    assert len(left) == 3 and all(name.endswith(".tmp") for name in left)
    assert remove_stale_temps(out / "model.json") == []  # its writer is still at work: kept
    writer.send_signal(signal.SIGKILL)
    writer.wait()

    write_text(out / "model.json", "{}")  # the next writer of each target sweeps what is left for it
    with replace_together(out, ["a.json"]) as stage:
        (stage / "a.json").write_text("{}", encoding="utf-8")
    swept = remove_stale_temps(out / "checkpoint")
    assert len(swept) == 1 and swept[0].name.startswith(f".checkpoint.{writer.pid}.")
    assert sorted(p.name for p in out.iterdir()) == [".model.json.123.bak", ".model.json.notes", "a.json",
                                                     "model.json"]


def test_outputs_get_the_usual_permissions(tmp_path):
    write_text(tmp_path / "a.txt", "x")
    private = tmp_path / "saved"
    private.mkdir(mode=0o700)
    (private / "weights.safetensors").write_bytes(b"x")
    os.chmod(private / "weights.safetensors", 0o600)
    make_public(private)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o755
    assert stat.S_IMODE((private / "weights.safetensors").stat().st_mode) == 0o644


def test_a_virtual_file_system_is_named(tmp_path):
    with pytest.raises(HaruhiError, match="virtual file system"):
        check_writable("/proc")
    with pytest.raises(HaruhiError, match="virtual file system"):
        write_text("/proc/haruhi-test.txt", "x")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(HaruhiError, match="cannot write to"):
        check_writable(tmp_path / "file" / "sub")
