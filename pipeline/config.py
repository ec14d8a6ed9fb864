"""Paths and params shared by all stages.

Every stage runs from the repository root (DVC's working directory), reads
`params.yaml` and writes to the paths below; `dvc.yaml` declares the same
paths as deps and outs (tests/integration/test_dvc_pipeline.py keeps the two in step).
"""

import argparse
from pathlib import Path

import yaml

PARAMS_FILE = Path("params.yaml")

RAW_CSV = Path("data/raw/jena_climate_2009_2016.csv")
HOURLY_TABLE = Path("data/prepared/hourly.parquet")
PREPARE_REPORT = Path("metrics/prepare.json")
WINDOWS_DIR = Path("data/windows")
MODEL_PATH = Path("models/model.keras")
ARCHITECTURE_DIR = Path("models/architecture")  # the model's summary.txt and model.png (diagram)
DVCLIVE_DIR = Path("dvclive")
EVALUATE_METRICS = Path("metrics/evaluate.json")
EVALUATE_PLOTS_DIR = Path("plots/evaluate")
EXPORT_DIR = Path("models/export")
PUBLICATION_RECORD = Path("models/publication.json")
SMOKE_METRICS = Path("metrics/smoke.json")


def load_params(path: Path = PARAMS_FILE) -> dict:
    """Read params.yaml; a missing file or section is an error that names it."""
    try:
        with open(path, encoding="utf-8") as handle:
            params = yaml.safe_load(handle)
    except FileNotFoundError:
        raise SystemExit(f"{path}: not found; run the stages from the repository root") from None
    if not isinstance(params, dict):
        raise SystemExit(f"{path}: expected a mapping of params, got {type(params).__name__}")
    return params


def stage_command_line(docstring: str, module: str, argv: list[str] | None = None) -> None:
    """A stage takes no arguments (params.yaml holds its settings): `python -m <module> --help` prints its
    docstring, what it reads and writes, and exits 0 without running it; anything else exits 2."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=docstring,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Settings come from params.yaml; `dvc repro` runs the stage when they change.",
    )
    parser.parse_args(argv)
