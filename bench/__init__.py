"""Benchmarks of lorasweep's speed goals (issue 7): ``python -m bench train|eval|sweep``.

Results are printed and appended to ``bench/RESULTS.md``; see ``bench/cli.py`` for the options.
"""
