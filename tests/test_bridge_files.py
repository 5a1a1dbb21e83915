"""bridge/files/atomic.py: the one atomic writer (backend, training, benchmarks and the add-on write through it)."""
from __future__ import annotations

import os
import stat

import pytest

from bridge.files.atomic import write_atomic


def test_text_bytes_and_chunks_land_whole_with_the_mode_asked_for(tmp_path):
    assert write_atomic(tmp_path / "a" / "t.json", "{\"ü\": 1}").read_text(encoding="utf-8") == "{\"ü\": 1}"
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    secret = write_atomic(tmp_path / "c.key", [b"ab", b"cd"], mode=0o600, durable=True)
    assert secret.read_bytes() == b"abcd" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.bin", "c.key"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = write_atomic(tmp_path / "scores.json", "old")

    def chunks():
        yield b"half of the new"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, chunks())
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["scores.json"]


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "out.ply").symlink_to(victim)
    written = write_atomic(tmp_path / "out.ply", b"new")
    assert victim.read_text() == "keep me" and not written.is_symlink() and written.read_bytes() == b"new"
