"""dvc.yaml agrees with the code, and `dvc repro` runs the data stages twice without rerunning."""

import pytest
import yaml

from pipeline import config
from tests.helpers.repository import REPO_ROOT

DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def declared_paths(stage: str, key: str) -> list[str]:
    entries = DVC_YAML["stages"][stage].get(key, [])
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


def test_stages_are_in_pipeline_order():
    assert list(DVC_YAML["stages"]) == ["download", "prepare", "window", "train", "evaluate", "export", "smoke"]


def test_outputs_match_the_paths_the_code_writes():
    assert declared_paths("download", "outs") == [str(config.RAW_CSV)]
    assert declared_paths("prepare", "outs") == [str(config.HOURLY_TABLE)]
    assert declared_paths("prepare", "metrics") == [str(config.PREPARE_REPORT)]
    assert declared_paths("window", "outs") == [str(config.WINDOWS_DIR)]
    assert declared_paths("train", "outs") == [
        str(config.MODEL_PATH),
        str(config.ARCHITECTURE_DIR),
        str(config.DVCLIVE_DIR / "plots"),
    ]
    assert declared_paths("evaluate", "outs") == [str(config.EVALUATE_PLOTS_DIR)]
    assert declared_paths("evaluate", "metrics") == [str(config.EVALUATE_METRICS)]
    assert declared_paths("export", "outs") == [str(config.EXPORT_DIR), str(config.PUBLICATION_RECORD)]
    assert declared_paths("smoke", "metrics") == [str(config.SMOKE_METRICS)]


def test_every_stage_depends_on_its_own_code_and_declared_params_exist():
    for name, stage in DVC_YAML["stages"].items():
        module = stage["cmd"].split("python -m ")[1].split()[0]
        assert module.replace(".", "/") + ".py" in stage["deps"], name
        for param in stage.get("params", []):
            section = PARAMS
            for key in param.split("."):
                assert key in section, f"stage {name}: param {param} missing from params.yaml"
                section = section[key]


def test_epochs_is_a_top_level_param():
    assert isinstance(PARAMS["epochs"], int)


@pytest.mark.slow
def test_repro_window_twice_reruns_nothing(pipeline_repo):
    pipeline_repo.dvc("repro", "window")
    hourly = pipeline_repo.root / "data/windows/hourly.npy"
    assert hourly.exists() and (pipeline_repo.root / "metrics/prepare.json").exists()
    second = pipeline_repo.dvc("repro", "window")
    assert "Running stage" not in second.stdout, second.stdout
    assert "up to date" in pipeline_repo.dvc("status", "window").stdout
