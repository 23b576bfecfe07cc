"""Subcommands of ``credit``: one module per command group for its parser and its
checks of the input (quick: no torch, Ray, MLflow or Optuna), and ``actions/`` for
the work itself (heavy imports), loaded when a command runs (``options.run_action``).
``options`` holds what the parsers share."""
