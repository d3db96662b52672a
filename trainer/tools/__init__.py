"""LoRA tools: extract a LoRA from two models, merge LoRAs, resize a LoRA's rank.

Run as ``python -m trainer.tools extract|merge|resize --help``.
"""
