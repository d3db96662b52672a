"""Evaluation of LoRA files: generation harness, scorers, objective, grids (issue 3).

* :class:`evaluators.harness.Harness` scores LoRA files on base checkpoints at strengths.
* :class:`evaluators.callback.EvaluationCallback` does it for each saved epoch of a run.
* ``python -m evaluators FILE... key=value...`` does it for existing files.
"""
