"""lorasweep's Optuna sweeper for Hydra (``hydra/sweeper=lorasweep_optuna``, the default of
``python -m sweeper -m``). Hydra finds it through the ``hydra_plugins`` namespace package."""
