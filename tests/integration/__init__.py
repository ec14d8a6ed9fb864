"""Tests across packages: DVC running the pipeline, dvc.yaml against the code, scripts, deployment."""
