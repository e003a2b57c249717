"""The README's simulator examples are what the commands print: each documented
command is run as written (in a directory holding its trace and values file) and its
output compared with the README's, line for line."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from sandbox_controller.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _examples() -> dict[str, tuple[list[str], list[str]]]:
    """Each ``$ sandbox-controller simulate|plan`` console block: its arguments and
    the lines it shows."""
    text = (ROOT / "README.md").read_text()
    found = {}
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        command, _, output = block.replace("\\\n", "").partition("\n")
        words = shlex.split(command.removeprefix("$ "))
        if words[:1] == ["sandbox-controller"] and words[1] in ("simulate", "plan"):
            if "--trace" in words:
                found[words[1]] = (words[1:], output.rstrip("\n").splitlines())
    return found


def test_the_readme_shows_what_simulate_and_plan_print(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = _examples()
    assert set(examples) == {"simulate", "plan"}
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "deploy/helm/agent-sandbox/values.yaml", "values.yaml")
    # As the README makes it: trace synth --editors 200 --days 1 --profile office-hours.
    synth = ["trace", "synth", "--editors", "200", "--days", "1", "--profile", "office-hours"]
    assert main([*synth, "-o", "trace.csv"]) == 0
    for name, (args, shown) in examples.items():
        assert main(args) == 0, name
        captured = capsys.readouterr()
        printed = captured.out.rstrip("\n").splitlines()
        # The run count and time go to standard error; the time depends on the machine.
        timing = re.sub(r"in [\d.]+s\)", "in Ns)", captured.err.strip())
        shown = [re.sub(r"in [\d.]+s\)", "in Ns)", line) for line in shown]
        assert shown == printed + ([timing] if timing else []), name
