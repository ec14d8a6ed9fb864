"""The checks of a served model (pipeline/serving_check.py) on their own: waiting for a version, the
documented signature, and comparing served answers with the SavedModel's, each failure named precisely."""

import grpc
import pytest
from tensorflow.core.protobuf import meta_graph_pb2

from pipeline.serving_check import CheckFailure, compare, described, documented_signature, wait_until_available


def test_waiting_for_a_server_that_is_not_there_times_out_clearly():
    with grpc.insecure_channel("127.0.0.1:9") as channel:
        with pytest.raises(CheckFailure, match=r"expected m version 3 AVAILABLE within 1 s; last answer: UNAVAILABLE"):
            wait_until_available(channel, "m", 3, timeout_seconds=1)


def test_a_signature_other_than_the_documented_one_is_described_precisely():
    signature = meta_graph_pb2.SignatureDef()
    history = signature.inputs["history"]
    history.dtype = 1  # DT_FLOAT
    for size in (-1, 100, 14):
        history.tensor_shape.dim.add(size=size)
    output = signature.outputs["temperature_degC"]
    output.dtype = 1
    output.tensor_shape.dim.add(size=-1)
    served = described(signature)
    assert served == {
        "inputs": {"history": ("DT_FLOAT", [-1, 100, 14])},
        "outputs": {"temperature_degC": ("DT_FLOAT", [-1])},
    }
    assert served != documented_signature(120, 24, 3)


def test_the_documented_signature_is_the_schema_one():
    assert documented_signature(120, 24, 3) == {
        "inputs": {"history": ("DT_FLOAT", [-1, 120, 14]), "timestamps": ("DT_INT64", [-1, 120])},
        "outputs": {
            "temperature_degC": ("DT_FLOAT", [-1]),
            "temperature_path_degC": ("DT_FLOAT", [-1, 24]),
            "temperature_quantiles_degC": ("DT_FLOAT", [-1, 24, 3]),
            "quantile_levels": ("DT_FLOAT", [-1, 3]),
            "valid_time": ("DT_INT64", [-1]),
        },
    }


def test_compare_names_the_output_and_the_first_bad_sample():
    import numpy as np

    def outputs(temperatures, valid_times=(0, 3600)):
        return {"temperature_degC": np.array(temperatures), "valid_time": np.array(valid_times)}

    assert compare("x", outputs([1.0, 2.0]), outputs([1.0, 2.00005]), 1e-4) == pytest.approx(5e-5)
    with pytest.raises(CheckFailure, match=r"gRPC Predict: temperature_degC: sample 1: expected 2.0, got 2.5"):
        compare("gRPC Predict", outputs([1.0, 2.5]), outputs([1.0, 2.0]), 1e-4)
    with pytest.raises(CheckFailure, match="temperature_degC: sample 0"):
        compare("x", outputs([np.nan, 1.0]), outputs([1.0, 1.0]), 1e-4)
    with pytest.raises(CheckFailure, match="valid_time: sample 1: expected 3600, got 3601"):
        compare("x", outputs([1.0, 2.0], (0, 3601)), outputs([1.0, 2.0]), 1e-4)
    with pytest.raises(CheckFailure, match=r"expected outputs \['temperature_degC', 'valid_time'\]"):
        compare("x", {"temperature_degC": np.array([1.0])}, outputs([1.0], (0,)), 1e-4)


def test_compare_checks_every_hour_and_quantile_and_names_them():
    import numpy as np

    quantiles = np.zeros((2, 6, 3), np.float32)
    levels = np.tile(np.float32([0.1, 0.5, 0.9]), (2, 1))
    reference = {"temperature_quantiles_degC": quantiles, "quantile_levels": levels}
    assert compare(
        "x", {"temperature_quantiles_degC": quantiles + 5e-5, "quantile_levels": levels}, reference, 1e-4
    ) == pytest.approx(5e-5, rel=1e-3)
    wrong = quantiles.copy()
    wrong[1, 3, 2] = 0.5
    with pytest.raises(CheckFailure, match="temperature_quantiles_degC: sample 1, hour \\+4, quantile 2: expected 0.0"):
        compare("x", {"temperature_quantiles_degC": wrong, "quantile_levels": levels}, reference, 1e-4)
    with pytest.raises(CheckFailure, match="quantile_levels: sample 0, quantile 1"):
        compare(
            "x",
            {"temperature_quantiles_degC": quantiles, "quantile_levels": levels + [[0, 0.1, 0]] * 2},
            reference,
            1e-4,
        )
    with pytest.raises(CheckFailure, match=r"expected shape \(2, 6, 3\), got \(2, 5, 3\)"):
        compare("x", {"temperature_quantiles_degC": quantiles[:, :5], "quantile_levels": levels}, reference, 1e-4)
