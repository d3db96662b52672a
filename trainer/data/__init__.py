"""The training data pipeline: kohya-layout folders -> bucketed batches of cached latents.

The entry point is :func:`trainer.data.dataset.build_training_data`. Nothing is imported here,
so that ``trainer.data.kohya_layout`` (used to validate a config) loads without torch.
"""
