"""The history-format study on the tiny backbone: one row per method, one column per
format, the user stage really trained on each format's pairs, the run's stores untouched."""

from __future__ import annotations

import hashlib
import json

from ownlm.oppu.model import user_pairs
from ownlm.run import Run
from ownlm.studies import formats as study
from ownlm.train.population import train_population


def _stored(run) -> dict[str, str]:
    """sha256 of every file the run holds outside eval/ (the study's own output)."""
    return {
        str(p.relative_to(run.dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.dir.rglob("*"))
        if p.is_file() and "eval" not in p.relative_to(run.dir).parts
    }


def test_format_study_trains_each_format_and_writes_its_table(tiny_cfg, tmp_path, monkeypatch):
    run = Run(tiny_cfg)
    train_population(run)
    before = _stored(run)
    seen: dict[tuple[str, str], list[tuple[str, str]]] = {}
    real_fit = study.fit_user

    def recording_fit(view, backbone, user, variant):
        fmt = next(f for f, t in study.history_formats(run.task).items() if t == view.task)
        seen[fmt, variant] = user_pairs(view, user, variant)
        return real_fit(view, backbone, user, variant)

    monkeypatch.setattr(study, "fit_user", recording_fit)
    out = study.format_study(run, out_dir=tmp_path / "eval", max_users=1)

    assert out["formats"] == ["template", "renamed", "kv"]  # demo-tags has no field to drop
    assert list(out["table"]) == ["rag", "pag", "peft", "oppu"]
    assert all(list(by) == out["formats"] for by in out["table"].values())
    assert list(out["references"]) == ["population-majority", "user-majority", "base"]
    assert out["users"] == 1 and out["metric"] == "accuracy"
    for method, s in out["spread"].items():
        values = [c["value"] for c in out["table"][method].values()]
        assert abs(s["spread"] - (max(values) - min(values))) < 1e-3
        low, high = s["interval"]
        assert low <= s["spread"] + 1e-9 and high >= s["spread"] - 1e-9

    assert {f for f, _ in seen} == set(out["formats"]) and {v for _, v in seen} == {"peft", "oppu"}
    template, renamed, kv = (seen[f, "oppu"] for f in ("template", "renamed", "kv"))
    assert all("Which tag" in p for p, _ in template)
    assert all("=" in p and "Which tag" not in p and "description:" not in p for p, _ in kv)
    assert all(p.startswith("input: ") for p, _ in seen["renamed", "peft"])
    assert renamed != template and [t for _, t in kv] == [t for _, t in template]
    assert out["examples"]["kv"].startswith("description=")

    written = json.loads((tmp_path / "eval" / "formats.json").read_text())
    assert written["table"] == out["table"] and (tmp_path / "eval" / "formats.png").exists()
    assert _stored(run) == before  # users trained in memory: no store written


def test_the_template_column_is_the_stored_adapters_when_current(tiny_cfg, tmp_path, monkeypatch):
    from ownlm.oppu.sequential import train_users

    run = Run(tiny_cfg)
    train_population(run)
    user = run.split.test[0]
    for variant in ("oppu", "peft"):
        train_users(run, variant, users=[user])
    trained = study.format_study(run, ["template"], tmp_path / "a", 1, reuse_stored=False)

    def no_training(*args, **kwargs):
        raise AssertionError("the template's users were trained again")

    monkeypatch.setattr(study, "fit_user", no_training)
    stored = study.format_study(run, ["template"], tmp_path / "b", 1)
    assert (
        stored["table"]["oppu"]["template"]["value"]
        == trained["table"]["oppu"]["template"]["value"]
    )
    assert (
        stored["table"]["peft"]["template"]["value"]
        == trained["table"]["peft"]["template"]["value"]
    )
