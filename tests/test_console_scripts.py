"""The console scripts pyproject.toml installs name real commands, each of which explains itself."""

import importlib
import tomllib

import pytest
from conftest import REPO_ROOT

SCRIPTS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_commands_are_installed_as_console_scripts():
    assert set(SCRIPTS) == {
        "wetterfrosch-inspect",
        "wetterfrosch-model-server",
        "wetterfrosch-forecast",
        "wetterfrosch-sync",
    }


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_script_runs_a_main_that_answers_help(script, capsys):
    module, function = SCRIPTS[script].split(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage:")
