"""``python -m sweeper.report``: the research report of a sweep, one self-contained HTML file.

Data (:mod:`.gather`) comes from the Optuna storage, the sweep's results file, the trial
folders and MLflow; :mod:`.plots` draws with matplotlib; :mod:`.diagnose` reads the evaluation
in the guide's terms; :mod:`.render` / :mod:`.sections` write escaped HTML.
"""
