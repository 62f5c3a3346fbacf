"""Atomic writes: the new content appears whole under the final name, durably, or not at all."""

import os

import pytest

from co2s import atomic


def test_write_fsyncs_file_before_and_folder_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "latest.ckpt"
    atomic.write_text(target, "new")
    assert events == [("fsync", str(tmp_path / ".latest.ckpt.tmp")), ("rename", str(target)),
                      ("fsync", str(tmp_path))]
    assert target.read_text() == "new"


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
