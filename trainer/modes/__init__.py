"""Training modes besides LoRA: DreamBooth (full fine-tuning) and textual inversion.

Each mode is selected by its ``train`` group (``train=dreambooth``, ``train=textual_inversion``),
which adds the mode's keys; ``trainer.run`` sets every mode up the same way and hands the
mode's own parts to ``trainer.modes.dreambooth`` / ``trainer.modes.textual_inversion``.
Nothing is imported here, so that reading the mode keys (``trainer.modes.settings``) does not
load torch.
"""
