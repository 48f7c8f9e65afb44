"""The qsmplanner command: every subcommand has --help; --version; unknown input exits 2."""
import subprocess
import sys

import pytest

from QSMPlannerLib import __version__
from QSMPlannerLib.cli import build_parser, main

EXPECTED = {"phantom", "qsm", "register", "normalize", "segment", "frame", "plan", "run", "demo"}


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)


def test_version_is_printed():
    out = subprocess.run([sys.executable, "-m", "QSMPlannerLib.cli", "--version"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_issue_subcommands_are_all_present():
    missing = EXPECTED - set(subcommands())
    assert not missing, f"subcommands missing: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: qsmplanner " + name in capsys.readouterr().out


def test_no_command_exits_2():
    assert main([]) == 2
