"""Stage 1 on a resumed run: kept, base/ untouched, while what it was trained from holds;
trained again when it does not."""

from dataclasses import replace

import torch

from ownlm.run import Run
from ownlm.train.population import train_population


def _stamps(run) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in run.base_dir.iterdir()}


def test_population_is_kept_while_its_inputs_hold(tiny_cfg):
    run = Run(tiny_cfg)
    first = train_population(run)
    assert "kept" not in first
    stamps, fp = _stamps(run), run.base_fingerprint()
    assert train_population(Run(tiny_cfg)) == {"pairs": first["pairs"], "kept": True}
    assert _stamps(run) == stamps and run.base_fingerprint() == fp
    # its LoRA settings changed (a library caller; `ownlm train` refuses this): retrained
    run.cfg.population.lr *= 2
    assert "kept" not in train_population(run)
    assert run.base_fingerprint() != fp
    # a base replaced behind the run's back is not kept either
    meta = run.base_dir / "ownlm_base.json"
    meta.write_text(meta.read_text().replace(run.base_fingerprint(), "someone-elses"))
    assert "kept" not in train_population(run)


def _scripted(val_losses, accuracy, snapshots):
    """A stand-in for `validation.pair_validator`: the figures of `val_losses` in turn,
    a fixed accuracy, and a copy of the LoRA at each validation in `snapshots`."""

    def make(backbone, model, task, vset):
        losses = iter(val_losses)

        def validate():
            snapshots.append(
                {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            )
            return {"val_loss": next(losses), "accuracy": accuracy, "reference": 0.25}

        return validate

    return make


def test_stage_1_stops_when_validation_rises_and_keeps_its_best_epoch(tiny_cfg, monkeypatch):
    from safetensors.torch import load_file

    from ownlm.train import population

    snapshots = []
    monkeypatch.setattr(
        population, "pair_validator", _scripted([3.0, 2.0, 2.5, 2.7], 0.5, snapshots)
    )
    tiny_cfg.population.epochs = 8  # a maximum: it stops after 2 epochs without a better one
    run = Run(tiny_cfg)
    stats = train_population(run)
    v = run.stage_record("population")["validation"]
    assert [r["epoch"] for r in v["records"]] == [0, 1, 2, 3] and v["stopped_early"]
    assert v["kept_epoch"] == 1 and v["kept"] == 1 and stats["warnings"] == []
    assert run.store().manifest("population").extra["validation"] == v
    stored = load_file(str(run.store().path("population") / "adapter_model.safetensors"))
    kept, last = snapshots[1], snapshots[3]
    assert any(not torch.equal(kept[n], last[n]) for n in kept)  # training moved on...
    for name, tensor in stored.items():  # ...and the epoch-1 LoRA is what was stored
        assert torch.equal(tensor, kept[name.replace(".weight", ".default.weight")])


def test_the_guard_warns_when_stage_1_learned_nothing(tiny_cfg, monkeypatch):
    from ownlm.train import stage

    tiny_cfg.population.lr = 1e-9  # lr must be > 0; this one moves nothing
    # whether the untrained tiny model beats the population majority on the few dev
    # items is luck (on the seed-0 demo the majority scores 0): pin an unreachable one
    real = stage.validation_set  # what every stage builds its dev validation with

    def unreachable(*args):
        return replace(real(*args), reference=1.0)

    monkeypatch.setattr(stage, "validation_set", unreachable)
    run = Run(tiny_cfg)
    stats = train_population(run)
    (warning,) = stats["warnings"]
    v = run.stage_record("population")["validation"]
    kept = v["records"][v["kept"]]["accuracy"]
    assert kept < v["reference"]
    assert (
        f"accuracy {kept:.4f} is worse than the population reference {v['reference']:.4f}"
        in warning
    )
    assert "--set population.lr=" in warning and "epochs" in warning
    assert run.stage_record("population")["warnings"] == [warning]


def test_the_guard_stays_silent_when_stage_1_beats_the_reference(tiny_cfg, monkeypatch):
    from ownlm.train import population

    monkeypatch.setattr(population, "pair_validator", _scripted([3.0, 2.0], 0.6, []))
    run = Run(tiny_cfg)
    assert train_population(run)["warnings"] == []
    assert run.stage_record("population")["warnings"] == []
