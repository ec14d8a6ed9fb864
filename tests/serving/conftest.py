"""Fixtures for the serving tests: TF Serving's test models and small SavedModels, built once per session.

Tests of TF Serving's official test models run on models of the same kinds
built here (``tests/helpers/tfserving_testdata.py``), and again on TF Serving's
own copies in ``../shared/tfserving-testdata`` when that folder is beside the
repository root (our machines and CI have it; a fresh clone elsewhere need not).
The servers themselves are ``tests.helpers.model_server.ServerProcess``.
"""

from pathlib import Path

import pytest

from tests.helpers.tfserving_testdata import SHARED_TESTDATA, build_testdata

TESTDATA_SOURCES = ["generated"] + (["shared"] if SHARED_TESTDATA.is_dir() else [])


@pytest.fixture(scope="session")
def generated_testdata(tmp_path_factory) -> Path:
    """TF Serving's test models and config files, built once per session."""
    return build_testdata(tmp_path_factory.mktemp("tfserving-testdata"))


@pytest.fixture(scope="session", params=TESTDATA_SOURCES)
def testdata(request) -> Path:
    """The folder of TF Serving's test models: the generated one, then the shared one when present."""
    if request.param == "shared":
        return SHARED_TESTDATA
    return request.getfixturevalue("generated_testdata")


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """Builds small SavedModels (tf.Module + tf.function signatures) on demand, cached."""
    import tensorflow as tf

    cache_dir = tmp_path_factory.mktemp("built-models")
    built = {}

    def build(kind: str, factor: float = 1.0) -> Path:
        key = (kind, factor)
        if key in built:
            return built[key]
        path = cache_dir / f"{kind}-{factor}"
        module = tf.Module()
        module.factor = tf.Variable(factor, dtype=tf.float32)
        signatures = {}
        if kind == "linear":

            @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
            def serve(x):
                return {"y": x * module.factor}

            signatures["serving_default"] = serve
        elif kind == "batch_probe":

            @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
            def serve(x):  # answers the size of the batch the request ran in
                return {"batch_size": tf.zeros_like(x) + tf.cast(tf.shape(x)[0], tf.float32) * module.factor}

            module.weights = tf.Variable(tf.random.uniform([384, 384]) / 384.0)

            @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
            def slow(x):
                state = tf.ones([384, 384])
                for _ in range(40):
                    state = tf.tanh(tf.matmul(state, module.weights))
                return {"y": x + tf.reduce_mean(state) * 0.0}

            signatures["serving_default"] = serve
            signatures["slow"] = slow
        else:
            raise ValueError(kind)
        tf.saved_model.save(module, str(path), signatures=signatures)
        built[key] = path
        return path

    return build
