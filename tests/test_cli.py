"""The `lodit` command: every listed subcommand exists, and user mistakes are one line, exit 2."""

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from lodit import cli


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_module_has_arguments_and_run(name):
    module = importlib.import_module(cli.COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"lodit {name}")
    module.add_arguments(parser)
    assert callable(module.run)
    assert parser.format_help().startswith(f"usage: lodit {name}")


def test_help_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2


def test_user_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "missing.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "lodit.cli", "train-tokenizer", "--config", str(missing)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "missing.yaml" in lines[0] and "Traceback" not in proc.stderr


def test_cli_reference_is_current():
    """docs/cli.md is generated from the parsers; regenerate it with scripts/cli_reference.py."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("cli_reference", root / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (root / "docs" / "cli.md").read_text() == module.render(), "run: python scripts/cli_reference.py"


def test_pyproject_lists_every_package():
    """pyproject.toml names the packages (configs/ is installed as lodit.configs): none may be missing."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(root).parts) for p in (root / "lodit").rglob("__init__.py")}
    assert listed == on_disk | {"lodit.configs"}
