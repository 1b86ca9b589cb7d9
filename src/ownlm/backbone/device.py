"""Where models run and in what precision: one place resolves the `device` and `dtype`
settings (`auto` included) for every stage, the evaluation and the server.

`auto` device: CUDA when present, else Apple's MPS, else the CPU. `auto` dtype:
bfloat16 on a GPU that supports it, float16 on other GPUs, float32 on the CPU. Asking
for something the machine cannot do is a ConfigError that says what to use instead.
"""

from __future__ import annotations

import torch

from ownlm.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch.device `spec` names, checked against this machine."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ConfigError(f"device {spec!r} is not a device; use one of {DEVICES}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(
                f"device={spec!r} but no CUDA GPU is available (torch {torch.__version__}, "
                f"{build}); use device=cpu (or auto), or install a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={spec!r} but this machine has {torch.cuda.device_count()} GPU(s); "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={spec!r} but MPS is not available here; use device=cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {spec!r} is not supported; use one of {DEVICES}")
    return device


def resolve_dtype(spec: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """The torch dtype `spec` names for `device` (default: the auto device)."""
    device = device or resolve_device("auto")
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if spec not in DTYPES:
        raise ConfigError(f"dtype {spec!r} is not supported; use auto or one of {list(DTYPES)}")
    if spec == "float16" and device.type == "cpu":
        raise ConfigError(
            "dtype=float16 is not supported on the CPU (slow and incomplete kernels); "
            "use bfloat16 or float32 there"
        )
    if spec == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"this GPU has no bfloat16 support; use dtype=float16 on {device}")
    return DTYPES[spec]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


QUANTIZE = ("4bit",)


def quantization_kwargs(quantize: str, device, dtype) -> dict:
    """`from_pretrained` arguments for a 4-bit NF4 frozen base (QLoRA: Dettmers et al.
    2023), computing in `dtype` (default: bfloat16 on a GPU, float32 on the CPU).
    bitsandbytes runs NF4 layers on the CPU too (0.50 tested), slowly: for checks and tests."""
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize={quantize!r} is not supported; use 4bit or leave it empty")
    device = torch.device(device or "cpu")
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(
            f"quantize={quantize} runs on a CUDA GPU or the CPU (bitsandbytes), but the "
            f"device is {device}; use device=cuda or cpu, or leave quantize empty"
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise ConfigError("quantize=4bit needs bitsandbytes: pip install 'ownlm[qlora]'") from e
    default = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype or default,
    )
    place = (device.index or 0) if device.type == "cuda" else "cpu"
    return {"quantization_config": config, "device_map": {"": place}}
