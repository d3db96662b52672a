"""The run's config read once into typed settings, before any model library is imported.

One module per config group reads and checks that group (every problem reported at once, each
naming the key, the value and what is allowed) and returns a frozen pydantic model or
dataclass: ``model``, ``network``, ``optimizer``, ``scheduler``, ``train`` here, ``data`` in
``trainer.data.options``, the mode keys in ``trainer.modes.settings``; ``eval`` and ``search``
are the sweeper's (``evaluators.settings``, ``sweeper.search_config``). ``spec.read_run_spec``
reads them all into one :class:`~trainer.settings.spec.RunSpec`, which the builders take.

``read.value`` is the one reader of the config tree; the defaults are the YAML files' under
``conf/`` (``defaults.yaml_defaults``), never restated here. Nothing in this package imports
torch, diffusers or transformers.
"""
