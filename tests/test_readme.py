"""The README's snippets run as written: every ``python`` block in a fresh interpreter, every
``dcls-zoo`` command line names a real command whose options parse."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

import pytest
from helpers import ROOT

from lightning_modules.commands.main import COMMANDS

README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
NETWORK = "# needs the network"


def _block_id(block: str) -> str:
    return block.strip().splitlines()[0][:40]


@pytest.mark.parametrize("block", [b for b in PYTHON_BLOCKS if not b.startswith(NETWORK)], ids=_block_id)
def test_python_snippet_runs_as_written(block, tmp_path, monkeypatch):
    """Each block in a namespace of its own, as a reader pastes it (NameError if it uses a name it
    never defines); in this process, since a fresh interpreter per block costs seconds each."""
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})


def test_the_first_snippet_runs_in_a_fresh_interpreter(tmp_path):
    """Nothing the test process imported helps: the layer snippet, as a new user runs it."""
    block = PYTHON_BLOCKS[0]
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_network_snippets_are_few_and_compile():
    """Blocks that download or upload cannot run offline: they are marked, and at least parse."""
    network = [b for b in PYTHON_BLOCKS if b.startswith(NETWORK)]
    assert len(network) <= 1 and len(PYTHON_BLOCKS) >= 5
    for block in network:
        compile(block, "README.md", "exec")


def _command_lines() -> list[list[str]]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part.split("#", 1)[0])
                if words[:1] == ["dcls-zoo"]:
                    lines.append(words[1:])
    return lines


def test_every_readme_command_line_is_a_real_command():
    lines = _command_lines()
    assert len(lines) >= 8
    for words in lines:
        assert words[0] in COMMANDS, words
        command = COMMANDS[words[0]]
        if command.add_arguments is not None and not any("<" in w for w in words):
            parser = argparse.ArgumentParser(prog=f"dcls-zoo {words[0]}")
            command.add_arguments(parser)
            parser.parse_args(words[1:])  # exits 2 on an option the command does not have
