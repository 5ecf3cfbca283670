"""CLI subcommands: each module defines `register(app)`; pipeline.cli discovers them all.

Keep heavy imports (lightgbm, mlflow, shap) inside the command functions so `--help` stays fast.
"""
