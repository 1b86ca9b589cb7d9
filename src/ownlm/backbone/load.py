"""Resolve a backbone spec (`minilm`, a local directory, a hub id) to a backbone, and load
a run's merged base. The `tiny` spec is built, not loaded: `ownlm.train.pretrain`."""

from __future__ import annotations

from pathlib import Path

from ownlm.backbone.base import CausalBackbone, EncoderBackbone
from ownlm.backbone.checksum import META_FILE, read_base_meta, verify_base
from ownlm.backbone.encoder import load_minilm_classifier
from ownlm.backbone.unmerged import attach_recorded
from ownlm.errors import ConfigError


def load_backbone(
    spec: str, task, max_len=None, device=None, dtype=None, quantize=None, prompt_format="auto"
):
    """The backbone `spec` names, before any ownlm stage: `minilm` (the packaged encoder,
    label tasks), or a Hugging Face causal LM directory / hub id in the local cache, with
    context `max_len` (None: its own, `backbone.context`) and `prompt_format`."""
    if spec == "tiny":
        raise ConfigError(
            "the tiny backbone is pre-trained on the run's corpus, not loaded: "
            "`ownlm prepare -c CONFIG` (or `ownlm train -c CONFIG`) builds it"
        )
    if spec == "minilm":
        if not task.labels:
            raise ConfigError(
                f"backbone 'minilm' scores labels, but task {task.name} generates text; use backbone=tiny or an HF causal LM"
            )
        model, tok = load_minilm_classifier(task.labels)
        return EncoderBackbone(model.to(device=device, dtype=dtype), tok, name="minilm")
    path = Path(spec)
    if path.exists() and not (path / "config.json").exists():
        raise ConfigError(
            f"backbone directory {path} has no config.json; point to a saved Hugging Face model directory"
        )
    try:
        name = path.name if path.exists() else spec
        return CausalBackbone.from_pretrained(
            spec, name, max_len, device, dtype, quantize, prompt_format
        )
    except OSError as e:
        raise ConfigError(
            f"cannot load backbone {spec!r} ({e}); give 'tiny', 'minilm', a local Hugging Face model "
            "directory, or a hub id that is in the local cache (no network is used)"
        ) from e


def load_base(path: Path, device=None, dtype=None):
    """Load a run's base written after stage 1 (see `write_base_meta`) onto `device` in
    `dtype` (default: the CPU, as saved), with the LoRAs it keeps unmerged hooked on
    (`backbone.unmerged`: a bfloat16 or 4-bit base). Its files are checked against the
    sha256 recorded with it first (`verify_base`: about a second per GB of weights, once
    per process): a corrupt base raises StoreError instead of answering."""
    meta_path = Path(path) / META_FILE
    if not meta_path.exists():
        raise ConfigError(f"no trained base in {path}; run `ownlm train --stages population` first")
    meta = read_base_meta(path)
    verify_base(path, meta)
    if meta["kind"] == "encoder":
        backbone = EncoderBackbone.from_pretrained(path, meta["name"], device, dtype)
    else:
        # a base written before the format was recorded was trained without special tokens
        fmt = meta.get("prompt_format", "bare")
        max_len = meta.get("max_len", 384)
        backbone = CausalBackbone.from_pretrained(
            path, meta["name"], max_len, device, dtype, prompt_format=fmt
        )
    # LoRAs a low-precision base keeps beside its weights (stage 1, the control pass)
    attach_recorded(backbone.model, path, meta)
    # the identity computed when the base was written: adapters trained on it stay valid
    # when it is loaded in another precision (bf16 values hash differently from fp32)
    backbone.recorded_fingerprint = meta.get("fingerprint")
    return backbone
