"""Where the world's shipped weights live (inside the package, found from any working dir)."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BASE_DIR = WEIGHTS_DIR / "base"  # the tiny SD 1.x-shaped base model (diffusers folder)
CLIP_DIR = WEIGHTS_DIR / "clip"  # the world CLIP (transformers CLIPModel folder)
DINO_DIR = WEIGHTS_DIR / "dino"  # the DINO-like image features (transformers Dinov2Model)
ORACLE_DIR = WEIGHTS_DIR / "oracle"  # the oracle classifier (safetensors + config.json)
