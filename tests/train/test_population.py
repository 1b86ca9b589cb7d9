"""Stage 1 on a resumed run: kept, base/ untouched, while what it was trained from holds;
trained again when it does not."""

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
