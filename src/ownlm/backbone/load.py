"""Resolve a backbone spec (`tiny`, `minilm`, a local directory, a hub id) to a backbone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ownlm.backbone.base import CausalBackbone, EncoderBackbone
from ownlm.backbone.encoder import load_minilm_classifier
from ownlm.backbone.tiny import TinyConfig, build_or_load_tiny
from ownlm.errors import ConfigError


def initial_backbone(
    spec: str,
    task,
    corpus: Callable[[], list[str]],
    cache_dir: Path,
    tiny: TinyConfig | None = None,
):
    """The backbone before any ownlm stage. `corpus` is called only when the tiny
    model must be pre-trained (it is cached by corpus and config)."""
    if spec == "tiny":
        path = build_or_load_tiny(corpus(), Path(cache_dir), tiny)
        return CausalBackbone.from_pretrained(
            path, name="tiny", max_len=(tiny or TinyConfig()).max_len
        )
    if spec == "minilm":
        if not task.labels:
            raise ConfigError(
                f"backbone 'minilm' scores labels, but task {task.name} generates text; use backbone=tiny or an HF causal LM"
            )
        model, tok = load_minilm_classifier(task.labels)
        return EncoderBackbone(model, tok, name="minilm")
    path = Path(spec)
    if path.exists() and not (path / "config.json").exists():
        raise ConfigError(
            f"backbone directory {path} has no config.json; point to a saved Hugging Face model directory"
        )
    try:
        return CausalBackbone.from_pretrained(spec, name=path.name if path.exists() else spec)
    except OSError as e:
        raise ConfigError(
            f"cannot load backbone {spec!r} ({e}); give 'tiny', 'minilm', a local Hugging Face model "
            "directory, or a hub id that is in the local cache (no network is used)"
        ) from e


def load_base(path: Path):
    """Load a run's merged base written after stage 1 (see `write_base_meta`)."""
    meta_path = Path(path) / "ownlm_base.json"
    if not meta_path.exists():
        raise ConfigError(f"no trained base in {path}; run `ownlm train --stages population` first")
    meta = json.loads(meta_path.read_text())
    if meta["kind"] == "encoder":
        return EncoderBackbone.from_pretrained(path, name=meta["name"])
    return CausalBackbone.from_pretrained(path, name=meta["name"], max_len=meta.get("max_len", 384))
