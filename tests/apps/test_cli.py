"""The ``mimo-audio`` entry point and its help texts."""

import subprocess
import sys

from apps.cli import build_parser, main


def test_top_level_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "mimo-audio" in out


def test_every_subcommand_has_help():
    parser = build_parser()
    sub_actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for action in sub_actions:
        for name, sub in action.choices.items():
            text = sub.format_help()
            assert name in text and "usage" in text


def test_python_dash_m_alias():
    res = subprocess.run([sys.executable, "-m", "apps", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "usage: mimo-audio" in res.stdout
