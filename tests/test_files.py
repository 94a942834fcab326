"""`mbconv.files.output_file`: every refusal is one line naming the path, before any work is done."""

from __future__ import annotations

import os

import pytest

import mbconv.files as files


def test_output_file_accepts_and_creates_the_folder(tmp_path) -> None:
    out = files.output_file(tmp_path / "a" / "b" / "x.json", "result")
    assert out.parent.is_dir() and not out.exists()


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_output_file_needs_a_file_name(bad) -> None:
    with pytest.raises(ValueError, match="invalid result path"):
        files.output_file(bad, "result")


def test_output_file_refuses_a_folder_and_an_uncreatable_folder(tmp_path) -> None:
    with pytest.raises(ValueError, match=f"result path {tmp_path} is a folder"):
        files.output_file(tmp_path, "result")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot create the folder of result") as e:
        files.output_file(blocker / "sub" / "x.json", "result")
    assert "\n" not in str(e.value)


def test_output_file_refuses_a_read_only_folder(tmp_path, monkeypatch) -> None:
    """A folder without write permission; `os.access` is answered for it, because as root (this project's CI
    machines) the real permission bits would not refuse the write."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: False if os.fspath(p) == os.fspath(ro) else real(p, mode))
    with pytest.raises(ValueError, match=f"cannot write result {ro / 'x.json'}: folder {ro} is not writable"):
        files.output_file(ro / "x.json", "result")
    ro.chmod(0o755)
