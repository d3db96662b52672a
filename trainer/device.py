"""Device and precision, resolved once from ``train.device`` and ``train.mixed_precision``."""

from __future__ import annotations

import os

import torch

from trainer.errors import ConfigError

PRECISIONS = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}
SAVE_DTYPES = {
    "float": torch.float32,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(
            f"train.device: {name!r} is not a device (auto, cpu, cuda, cuda:N)"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available")
    return device


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """``auto`` is bf16 autocast on CUDA and plain fp32 on the CPU."""
    if mixed_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if mixed_precision not in PRECISIONS:
        allowed = ", ".join(["auto", *PRECISIONS])
        raise ConfigError(f"train.mixed_precision: {mixed_precision!r} is not one of {allowed}")
    if mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.mixed_precision: fp16 needs CUDA; use bf16 or no on the CPU")
    return PRECISIONS[mixed_precision]


def make_deterministic(seed: int, device: torch.device, deterministic: bool = True) -> None:
    """Seed everything; ``deterministic`` (``train.deterministic``) picks kernels.

    On the CPU, True forbids non-deterministic kernels (bitwise-reproducible runs). On CUDA,
    True turns cuDNN's autotuner off (it may pick different algorithms run to run); False turns
    it on, which is faster for the UNet's fixed shapes. CUDA runs are not bitwise reproducible
    either way (atomic adds in some backward kernels).
    """
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(bool(deterministic))
    else:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = not deterministic


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, without making the host wait for the GPU.

    A copy from ordinary (pageable) CPU memory to CUDA waits until the GPU's queue has drained,
    a hidden host sync at every step; a copy from pinned memory is queued like a kernel.
    """
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
