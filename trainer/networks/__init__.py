"""LoRA adapters (kohya LierLa / C3Lier on peft) and kohya's file format."""

from trainer.networks.kohya_format import read_lora, save_lora
from trainer.networks.lora import LoraNetwork, apply_lora
from trainer.networks.metadata import kohya_metadata

__all__ = ["LoraNetwork", "apply_lora", "kohya_metadata", "read_lora", "save_lora"]
