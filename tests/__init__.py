"""Wetterfrosch's tests, laid out as the code is.

- ``tests/pipeline/``: one test module per stage or library module of ``pipeline/``.
- ``tests/serving/`` (``store/`` for ``serving/store/``): the ModelServer, the version store, ``serving.sync``.
- ``tests/forecast/``: the forecast client.
- ``tests/integration/``: what spans them: DVC running the pipeline, dvc.yaml against the code,
  the console scripts, the deployment manifests.
- ``tests/helpers/``: what the tests share (small windows and models, throwaway repositories,
  object stores on loopback, model server processes, TLS files); benchmarks import them too.

Every folder is a package under ``tests``, so that a test module's name (``tests.serving.test_policy``)
never hides the package it tests (``serving``).
"""
