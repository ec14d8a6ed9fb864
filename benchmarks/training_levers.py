"""Training levers on a window stage's output: accuracy on the test split against training time.

Trains each chosen configuration once per seed, in this process, on a given
`data/windows` directory (for the real record: run the download, prepare and
window stages with `data.url` pointing at the real CSV), and prints for each
run: the test split's MAE of the median at +24 h (the horizon) and at +1 h, the
epochs run (early stopping may end a run before `epochs`) and the training
time in wall seconds and CPU seconds (all of this process's threads; on a
machine shared with other jobs the CPU seconds are the fairer speed figure).
Then per configuration the mean over the seeds.

`reference` is the forecaster before these levers (2 GRU layers of 32 units
over 120 hourly steps, batch 512, constant learning rate, up to 10 epochs);
each lever is the reference with some params changed, so the table says what
each one does alone or in a combination. `defaults` is params.yaml as it is.

Levers measured on the real record and dropped, whose code is gone (seeds 42 / 43, +24 h MAE, +1 h
MAE, CPU s; all on conv4 with cosine unless said): XLA (`jit_compile`, which Keras refuses under op
determinism and had to be forced; deterministic on the CPU, but no faster: 2.366 / 2.374, 0.513 /
0.505, 41 / 49 CPU s against 43 / 47 without); an exponential moving average of the weights
(momentum 0.99, 1 layer of 64: 2.337 / 2.320, 0.521 / 0.524); the last hours' features straight to
the head (6 hours, constant rate: 2.399 / 2.391, 0.572 / 0.539; 1 hour, 1 layer of 64: 2.314 /
2.337, 0.501 / 0.532); the last 4 or 8 hours unstrided after the convolution's steps (1 layer of
64: 2.340 / 2.320, 0.510 / 0.502; 2.355 / 2.338, 0.528 / 0.507).

Targets (issue 18, real record, both seeds): +24 h MAE <= 2.30 C, +1 h MAE
<= 0.50 C, the train stage in <= 45 s wall on a quiet machine.

    python benchmarks/training_levers.py WINDOWS_DIR [--configs NAME ...] [--seeds 42 43] [--list]
"""

import argparse
import statistics
import time
from pathlib import Path

import keras
import yaml

from pipeline import schema
from pipeline.dataset import load_windows
from pipeline.evaluate import forecasts
from pipeline.model import median_position
from pipeline.scores import mae
from pipeline.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]

REFERENCE = {
    "epochs": 10,
    "model": {"layers": 2, "units": 32, "conv_filters": 0},
    "train": {"learning_rate": 0.002, "batch_size": 512, "patience": 3, "schedule": "constant"},
}
CONV = {"conv_filters": 32, "conv_kernel": 4, "conv_stride": 4}
COSINE = {"schedule": "cosine", "warmup_share": 0.15, "patience": 100}  # the schedule sets the budget
WIDE = {**CONV, "layers": 1, "units": 64}
LEVERS = {
    "reference": {},
    "conv4": {"model": CONV},
    "conv4_cosine6": {"epochs": 6, "model": CONV, "train": {**COSINE, "learning_rate": 0.004}},
    "conv2_cosine6": {"epochs": 6, "model": {**CONV, "conv_stride": 2}, "train": {**COSINE, "learning_rate": 0.004}},
    "conv4_1layer64_cosine6": {"epochs": 6, "model": WIDE, "train": {**COSINE, "learning_rate": 0.004}},
    "conv4_1layer64_cosine8": {"epochs": 8, "model": WIDE, "train": {**COSINE, "learning_rate": 0.004}},
    "conv4_1layer64_cosine8_lr6": {"epochs": 8, "model": WIDE, "train": {**COSINE, "learning_rate": 0.006}},
    "conv4_1layer64_cosine8_share04": {
        "epochs": 8,
        "model": WIDE,
        "train": {**COSINE, "learning_rate": 0.004, "final_hour_share": 0.4},
    },
    "conv4_1layer128_cosine6": {
        "epochs": 6,
        "model": {**WIDE, "units": 128},
        "train": {**COSINE, "learning_rate": 0.004},
    },
    "conv4f64_1layer64_cosine6": {
        "epochs": 6,
        "model": {**WIDE, "conv_filters": 64},
        "train": {**COSINE, "learning_rate": 0.004},
    },
    "conv4_1layer64_drop01_cosine6": {
        "epochs": 6,
        "model": {**WIDE, "dropout": 0.1},
        "train": {**COSINE, "learning_rate": 0.004},
    },
    "conv4_1layer64_cosine6_share03": {
        "epochs": 6,
        "model": WIDE,
        "train": {**COSINE, "learning_rate": 0.004, "final_hour_share": 0.3},
    },
    "b1024_conv4_1layer64_cosine6": {
        "epochs": 6,
        "model": WIDE,
        "train": {**COSINE, "learning_rate": 0.006, "batch_size": 1024},
    },
    "ensemble2_b1024": {"epochs": 6, "model": WIDE, "train": {**COSINE, "learning_rate": 0.006, "batch_size": 1024}},
}
MEMBERS = {"ensemble2_b1024": 2}  # seed ensembles: members trained one after the other, forecasts averaged
DEFAULT_CONFIGS = ["defaults"]


def configured(params: dict, overrides: dict, seed: int) -> dict:
    """`params` with the section-wise `overrides` (a top-level value replaces, a section is updated) and the seed."""
    result = {key: dict(value) if isinstance(value, dict) else value for key, value in params.items()}
    for key, value in overrides.items():
        if isinstance(value, dict):
            result[key].update(value)
        else:
            result[key] = value
    result["seed"] = seed
    return result


def configurations(params: dict) -> dict[str, dict]:
    """Every configuration by name: params.yaml itself and the reference with each lever."""
    reference = configured(params, REFERENCE, params["seed"])
    levers = {name: configured(reference, lever, params["seed"]) for name, lever in LEVERS.items()}
    return {"defaults": params, **levers}


def averaged(models: list, lookback: int) -> keras.Model:
    """One model whose quantiles are the members' quantiles averaged (still ascending)."""
    if len(models) == 1:
        return models[0]
    inputs = {
        name: keras.Input(shape=shape[1:], dtype=dtype, name=name)
        for name, (dtype, shape) in schema.served_signature(lookback)["inputs"].items()
    }
    for number, model in enumerate(models):
        model.name = f"member_{number}"
    return keras.Model(inputs, keras.layers.Average()([model(inputs) for model in models]))


def measure(windows, params: dict, members: int = 1) -> dict:
    """Train with `params` (`members` times, seeds seed, seed + 1, ..., their forecasts averaged), score
    the median on the test split; the figures of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    runs = [train(windows, {**params, "seed": params["seed"] + 1000 * member}, verbose=0) for member in range(members)]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model, history = averaged([model for model, _ in runs], windows.lookback), runs[0][1]
    levels = params["model"]["quantiles"]
    result = forecasts(model, windows, params["evaluate"]["climatology_window_days"], levels)
    first_hour = result["quantiles"][:, 0, median_position(levels)]
    return {
        "mae_24h": mae(result["predicted"], result["observed"]),
        "mae_1h": mae(first_hour, result["observed_paths"][:, 0]),
        "epochs": len(history.epoch),
        "wall": wall,
        "cpu": cpu,
    }


COLUMNS = [
    ("mae_24h", "+24h MAE", "{:9.3f}"),
    ("mae_1h", "+1h MAE", "{:9.3f}"),
    ("epochs", "epochs", "{:9d}"),
    ("wall", "wall s", "{:9.1f}"),
    ("cpu", "CPU s", "{:9.1f}"),
]


def row(name: str, seed: str, figures: dict) -> str:
    return f"{name:<28} {seed:>5} " + " ".join(form.format(figures[key]) for key, _, form in COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("windows", type=Path, nargs="?", help="a window stage's output directory")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="configurations to train")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    parser.add_argument("--list", action="store_true", help="list the configurations and their params, then stop")
    arguments = parser.parse_args()
    params = yaml.safe_load(arguments.params.read_text())
    available = configurations(params)
    if arguments.list:
        for name in available:
            print(f"{name}: {LEVERS.get(name, 'params.yaml')}")
        return
    unknown = sorted(set(arguments.configs) - set(available))
    if unknown or arguments.windows is None:
        parser.error(
            f"unknown configurations {unknown}; known: {sorted(available)}"
            if unknown
            else "the windows directory is required"
        )
    windows = load_windows(arguments.windows)
    print(f"windows {arguments.windows}: samples { ({name: len(s) for name, s in windows.starts.items()}) }")
    print(f"{'configuration':<28} {'seed':>5} " + " ".join(f"{title:>9}" for _, title, _ in COLUMNS), flush=True)
    runs = {}
    for name in arguments.configs:
        for seed in arguments.seeds:
            figures = measure(windows, configured(available[name], {}, seed), MEMBERS.get(name, 1))
            runs.setdefault(name, []).append(figures)
            print(row(name, str(seed), figures), flush=True)
    print("\nmean over the seeds")
    for name, figures in runs.items():
        means = {key: statistics.mean(run[key] for run in figures) for key, _, _ in COLUMNS}
        means["epochs"] = round(means["epochs"])
        print(row(name, "mean", means))


if __name__ == "__main__":
    main()
