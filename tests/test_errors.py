"""What the CLI prints for an error: ownlm's own and the operating system's as one line
naming the path and the fix; anything else (a bug) keeps its traceback."""

import errno
import os
from pathlib import Path

import pytest

from ownlm.errors import ConfigError, problem_line, shown


def _raised(fn, *args) -> BaseException:
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 (the test wants whatever it raised)
        return e
    raise AssertionError("nothing raised")


def _write_to_full_disk(path: Path) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises: no filename


def test_a_full_disk_names_the_file_being_written_and_the_fix(tmp_path):
    line = problem_line(_raised(_write_to_full_disk, tmp_path / "adapters" / "model.bin"))
    assert line.startswith(f"no space left on the disk that holds '{tmp_path / 'adapters'}")
    assert "free space there or point ownlm at another folder" in line


def test_safetensors_full_disk_is_read_as_the_os_error_it_wraps(tmp_path):
    from safetensors import SafetensorError

    def save_file(tensors, filename):
        raise SafetensorError("Error while serializing: I/O error: No space left (os error 28)")

    line = problem_line(_raised(save_file, {}, str(tmp_path / "w.safetensors")))
    assert line.startswith(f"no space left on the disk that holds '{tmp_path}")


def test_a_scratch_folder_is_named_by_the_folder_it_sits_in(tmp_path):
    e = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".tmp-u1-9-ab" / "x"))
    assert f"holds '{tmp_path}' (" in problem_line(e)


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    (tmp_path / "runs").write_text("")
    e = _raised(Path.mkdir, tmp_path / "runs" / "cli" / "adapters", 0o777, True)
    assert isinstance(e, NotADirectoryError)
    assert problem_line(e).startswith(f"'{tmp_path / 'runs'}' is a file, not a folder")


def test_ownlm_errors_are_their_message_and_bugs_keep_their_traceback():
    assert problem_line(ConfigError("bad r")) == "bad r"
    assert problem_line(ValueError("a bug")) is None
    assert problem_line(OSError("no errno: not the file system's")) is None
    assert problem_line(KeyboardInterrupt()) is None


@pytest.mark.parametrize("value", ["x" * 10**6, list(range(10**5)), {"k": "v" * 10**5}])
def test_shown_cuts_a_long_value(value):
    assert len(shown(value)) < 100
