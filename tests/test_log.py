"""Output a machine can keep: off a terminal, plain lines and no bar redraws."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from ownlm import log as ownlm_log
from tests.conftest import TINY_OVERRIDES


def _captured(monkeypatch):
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(ownlm_log.plain(record.getMessage()))

    monkeypatch.setenv("OWNLM_PROGRESS", "lines")
    logger = logging.getLogger("ownlm.progress")
    handler = Keep()
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "propagate", False)
    return records, lambda: logger.removeHandler(handler)


def test_progress_off_a_terminal_prints_a_line_per_tenth_and_at_the_end(monkeypatch):
    records, done = _captured(monkeypatch)
    try:
        assert list(ownlm_log.progress(range(25), desc="user LoRAs", unit="user")) == list(
            range(25)
        )
        with ownlm_log.progress(total=3, desc="eval oppu", unit="user", every=2) as bar:
            for _ in range(3):
                bar.update(1)
        assert list(ownlm_log.progress(range(5), desc="steps", leave=False)) == list(range(5))
    finally:
        done()
    lines = [r.split(",")[0] for r in records if r.startswith("user LoRAs")]
    assert lines == [f"user LoRAs: {n}/25 user" for n in (10, 20, 25)]  # every 10, the end
    assert [r.split(",")[0] for r in records[-2:]] == ["eval oppu: 2/3 user", "eval oppu: 3/3 user"]
    assert not any(r.startswith("steps") for r in records)  # short inner loops stay quiet


def test_a_long_inner_loop_prints_a_heartbeat_line_off_a_terminal(monkeypatch):
    records, done = _captured(monkeypatch)
    clock = iter(range(0, 1000, 25))  # 25 s per step
    monkeypatch.setattr(ownlm_log.time, "perf_counter", lambda: float(next(clock)))
    try:
        list(ownlm_log.progress(range(8), desc="pre-training", unit="step", leave=False))
    finally:
        done()
    lines = [r.split(",")[0] for r in records if r.startswith("pre-training")]
    assert lines and len(lines) < 8 and lines[0].startswith("pre-training: ")
    assert "pre-training: 8/8 step" not in lines  # no closing line: the stage says it


def test_markup_like_text_is_printed_as_is():
    assert ownlm_log.plain("[bold]stage 1[/] on [/tmp/x]") == "stage 1 on [/tmp/x]" or (
        ownlm_log.plain("[bold]stage 1[/] on [/tmp/x]") == "[bold]stage 1[/] on [/tmp/x]"
    )
    assert ownlm_log.plain("labels [/] closed") == "labels [/] closed"  # no MarkupError


def test_train_log_file_has_no_redraws_bars_or_warnings(tmp_path):
    keys = [f"output_dir={tmp_path / 'runs'}", "name=t", "data=demo-tags", "max_users=6"]
    args = [a for k in [*keys, *TINY_OVERRIDES] for a in ("--set", k)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OWNLM_PROGRESS", None)
    out = subprocess.run(
        [sys.executable, "-m", "ownlm.cli", "train", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,  # bytes: text mode would turn a bar's \r into \n
        timeout=300,
    )
    text = (out.stderr + out.stdout).decode()
    assert out.returncode == 0, text
    assert "\r" not in text and "Loading weights" not in text
    assert "Warning" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert any("stage 1" in line for line in lines)
    assert any("stage 3" in line for line in lines)
    assert all(len(line) == len(line.rstrip()) for line in lines)  # no padding to 120 cols
    assert len(lines) < 40, text
