"""End to end through DVC: `dvc repro evaluate`, then an experiment with other epochs.

Runs in a temporary git + DVC copy of the repository on two months of
synthetic data (see conftest.pipeline_repo), so the model is poor; what is
checked is the plumbing: stages, outputs, metrics, plots and experiments.
"""

import csv
import io
import json

import pytest

pytestmark = pytest.mark.slow


def test_repro_evaluate_then_an_epochs_experiment(pipeline_repo):
    root = pipeline_repo.root
    pipeline_repo.dvc("repro", "evaluate")
    assert (root / "models" / "model.keras").is_file()
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert {"test_mae_degC", "persistence_mae_degC", "climatology_mae_degC", "blessed"} <= set(metrics)
    assert json.loads((root / "dvclive" / "metrics.json").read_text())["eval"]["mae"] > 0

    plots = json.loads(pipeline_repo.dvc("plots", "show", "--json").stdout)["data"]
    assert {"Learning curve, MAE (degC)", "Test period, observed and predicted temperature",
            "Test MAE by month of the year", "Residuals, predicted - observed"} <= set(plots)

    pipeline_repo.run("git", "add", "-A")
    pipeline_repo.run("git", "-c", "user.name=test", "-c", "user.email=test@example.com",
                      "commit", "-q", "-m", "evaluated")
    experiment = pipeline_repo.dvc("exp", "run", "-S", "epochs=2")
    assert "Running stage 'train'" in experiment.stdout and "Running stage 'evaluate'" in experiment.stdout
    assert "Running stage 'window'" not in experiment.stdout, experiment.stdout
    assert json.loads((root / "dvclive" / "metrics.json").read_text())["step"] <= 1  # at most 2 epochs

    rows = list(csv.DictReader(io.StringIO(pipeline_repo.dvc("exp", "show", "--csv").stdout)))
    experiments = [row for row in rows if row["epochs"] == "2" and row["typ"] != "workspace"]
    assert experiments, rows
    assert float(experiments[0]["test_mae_degC"]) > 0 and experiments[0]["blessed"] in ("True", "False")
