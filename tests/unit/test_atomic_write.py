"""The one atomic-write helper: a full disk or a killed writer leaves the previous file whole,
no temporary file behind, and new files get the umask's mode (not mkstemp's 0600)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from trainer.atomic_write import atomic_path, write_bytes, write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_enospc_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path, full_disk):
    target = tmp_path / "optuna_results.yaml"
    write_text(target, "old: 1\n")
    full_disk()
    with pytest.raises(OSError) as info:
        write_text(target, "new: 2\n" * 1000)
    assert info.value.errno == errno.ENOSPC
    assert str(target) in str(info.value) and "unchanged" in str(info.value)
    assert target.read_text() == "old: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna_results.yaml"]


def test_a_writer_killed_midway_leaves_the_previous_file(tmp_path):
    target = tmp_path / "report.html"
    write_text(target, "<p>old report</p>")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("<p>half a new rep")
        raise KeyboardInterrupt  # what SIGINT does mid-write
    assert target.read_text() == "<p>old report</p>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_replaces_content_and_creates_folders(tmp_path):
    target = tmp_path / "a" / "b" / "x.bin"
    write_bytes(target, b"1")
    write_bytes(target, b"22")
    assert target.read_bytes() == b"22"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_files_get_the_umask_mode_even_from_libraries_that_write_0600(
    tmp_path, umask, mask, expected
):
    umask(mask)
    write_text(tmp_path / "plain.txt", "x")
    with atomic_path(tmp_path / "lib.bin") as tmp:
        # What safetensors' save_file does: its own 0600 temporary file renamed over ours.
        scratch = tmp_path / "scratch"
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"data")
        os.close(fd)
        os.replace(scratch, tmp)
    assert mode(tmp_path / "plain.txt") == expected
    assert mode(tmp_path / "lib.bin") == expected
