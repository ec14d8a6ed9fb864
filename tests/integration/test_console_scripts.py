"""The console scripts pyproject.toml installs name real commands, each of which explains itself."""

import importlib
import tomllib

import pytest

from tests.helpers.repository import REPO_ROOT

SCRIPTS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_commands_are_installed_as_console_scripts():
    assert set(SCRIPTS) == {
        "wetterfrosch-inspect",
        "wetterfrosch-model-server",
        "wetterfrosch-forecast",
        "wetterfrosch-issue",
        "wetterfrosch-sync",
        "wetterfrosch-verify",
    }


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_script_runs_a_main_that_answers_help(script, capsys):
    module, function = SCRIPTS[script].split(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage:")


def test_the_model_servers_help_gives_every_flag_a_line_in_its_group(capsys):
    from serving.model_server import IMPLEMENTED_FLAGS, NO_EFFECT_FLAGS, UNSUPPORTED_FLAGS, build_parser

    text = build_parser().format_help()
    served, no_effect, refused = (
        text.index(f"\n{title}:\n") for title in ("served", "accepted without effect", "refused")
    )
    assert served < no_effect < refused
    for flags, start, end in (
        (IMPLEMENTED_FLAGS, served, no_effect),
        (NO_EFFECT_FLAGS, no_effect, refused),
        (UNSUPPORTED_FLAGS, refused, len(text)),
    ):
        for name, _, default, *_ in flags:
            at = text.index(f"\n  --{name} ", start)
            assert at < end, f"--{name} is not in its group"
            assert f"(default: {default!r})" in " ".join(text[at + 3 :].split("\n  --")[0].split())
