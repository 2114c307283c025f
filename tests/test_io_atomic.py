"""Atomic writes (rass.utils.io): permissions from the umask without ever changing it, thread safety,
the folder synced after the rename."""
from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest

from rass.utils import io as rio


@pytest.fixture
def umask_027():
    """Run a test under umask 027 (not the usual 022, so a hard-coded 0644 would fail)."""
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_from_proc_on_linux(tmp_path, umask_027):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nUmask:\t0037\nState:\tR (running)\n")
    assert rio._umask_from_proc(str(status)) == 0o037
    status.write_text("Name:\tpython\n")  # kernels before 4.7 have no such line
    assert rio._umask_from_proc(str(status)) is None
    assert rio._umask_from_proc(str(tmp_path / "absent")) is None
    if os.path.exists("/proc/self/status") and rio._HAS_PROC:
        assert rio.current_umask() == 0o027  # the live value, a change after import included
    assert rio.default_mode() == 0o640 and rio.default_mode(is_dir=True) == 0o750


def test_atomic_writes_never_change_the_umask(tmp_path, umask_027, monkeypatch):
    if not rio._HAS_PROC:
        pytest.skip("no /proc/self/status: the umask is read once at import")

    def forbidden(mask):
        raise AssertionError(f"os.umask({mask:o}) called by an atomic write")

    monkeypatch.setattr(os, "umask", forbidden)
    rio.write_text_atomic(str(tmp_path / "a.txt"), "x")
    rio.save_image_atomic(str(tmp_path / "b.png"), np.zeros((2, 3), np.uint8))
    assert _mode(tmp_path / "a.txt") == 0o640 and _mode(tmp_path / "b.png") == 0o640
    assert (tmp_path / "a.txt").read_text() == "x"


def test_files_created_by_other_threads_during_atomic_writes_keep_the_umask_mode(tmp_path, umask_027):
    """One thread writes atomically while another creates files with open(): every file is 0640 (the
    old code set the umask to 0 for a moment, so some of the other thread's files came out 0666)."""
    atomic_dir, plain_dir = tmp_path / "atomic", tmp_path / "plain"
    atomic_dir.mkdir()
    plain_dir.mkdir()
    stop = threading.Event()
    errors = []

    def writer() -> None:
        try:
            for i in range(300):
                rio.write_bytes_atomic(str(atomic_dir / f"{i}.bin"), b"a" * 16)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            stop.set()

    t = threading.Thread(target=writer)
    t.start()
    n = 0
    while not stop.is_set() or n < 300:
        with open(plain_dir / f"{n}.txt", "w") as f:
            f.write("p")
        os.mkdir(plain_dir / f"d{n}")
        n += 1
    t.join()
    assert not errors, errors
    atomic_modes = {_mode(p) for p in atomic_dir.iterdir()}
    plain_modes = {_mode(p) for p in plain_dir.iterdir() if p.is_file()}
    dir_modes = {_mode(p) for p in plain_dir.iterdir() if p.is_dir()}
    assert len(list(atomic_dir.iterdir())) == 300 and n >= 300
    assert atomic_modes == {0o640} and plain_modes == {0o640} and dir_modes == {0o750}


def test_the_folder_is_synced_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync, real_replace = os.fsync, os.replace
    events = []

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(kind)
        if kind == "dir":
            synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None)
        return real_fsync(fd)

    def replace(a, b):
        events.append("rename")
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    rio.write_text_atomic(str(tmp_path / "sub" / "c.txt"), "y")
    if os.name == "nt":
        assert events == ["file", "rename"]
        return
    assert events == ["file", "rename", "dir"]
    if synced[0] is not None:
        assert synced[0] == os.path.realpath(tmp_path / "sub")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "d.txt"
    rio.write_text_atomic(str(path), "old")
    with pytest.raises(RuntimeError, match="half"):
        with rio.atomic_open(str(path), "w") as f:
            f.write("new")
            raise RuntimeError("half written")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["d.txt"]
