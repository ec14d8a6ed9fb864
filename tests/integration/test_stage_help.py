"""Every stage explains itself: `python -m pipeline.<stage> --help` prints what it reads and writes and
exits 0 without running; an unknown argument is an error. Run in-process (runpy), as `python -m` would."""

import runpy
import sys

import pytest

STAGES = ["download", "prepare", "window", "train", "evaluate", "export", "smoke"]
# runpy warns that the stage module was imported before (by another test); it runs it afresh all the same
pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules after import:RuntimeWarning")


@pytest.mark.parametrize("stage", STAGES)
def test_help_prints_what_goes_in_and_out_and_runs_nothing(stage, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: running the stage would fail at once
    monkeypatch.setattr(sys, "argv", [f"pipeline/{stage}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(f"pipeline.{stage}", run_name="__main__", alter_sys=False)
    printed = capsys.readouterr().out
    assert exit_.value.code == 0
    assert printed.startswith(f"usage: python -m pipeline.{stage}")
    assert "In:" in printed and "Out:" in printed and "params.yaml" in printed
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_argument_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline/train.py", "--epochs=3"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("pipeline.train", run_name="__main__", alter_sys=False)
    assert exit_.value.code == 2 and "unrecognized arguments: --epochs=3" in capsys.readouterr().err
