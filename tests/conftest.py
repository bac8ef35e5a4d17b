"""Shared fixtures: the loopback server of ``helpers.py`` (the session's fake Hugging Face Hub with
the client pointed at it, or a fresh server of a test's own) and the optional oracle."""

from __future__ import annotations

import sys
from pathlib import Path

# Lightning's log handlers bind the stream sys.stderr is when Lightning is first imported. The
# ``dcls-zoo`` entry point imports Lightning only when a training command runs, which inside a
# test is under capsys: import it here so the handlers write to the real stderr, not to a test's
# captured stream that is closed after it.
import lightning.pytorch  # noqa: F401
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import ORACLE_MISSING, FakeHub, official_dcls_modules, point_hub_client_at  # noqa: E402


@pytest.fixture(autouse=True)
def restore_benchmark_mode():
    """Lightning's ``Trainer(benchmark=...)`` sets ``torch.backends.cudnn.benchmark`` for the whole
    process, and the CPU layers' measured variant choices (``dcls_zoo.autotune``) follow it: one
    test's trainer must not switch them on for the tests after it."""
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = benchmark


@pytest.fixture(scope="session")
def fake_hub_server():
    """One fake Hub (127.0.0.1, a free port) for the session, shut down at the end."""
    with FakeHub() as hub:
        yield hub


@pytest.fixture
def fake_hub(fake_hub_server, monkeypatch, tmp_path):
    """The session's fake Hub, its request log and misbehaviours cleared, with the client pointed at it.

    ``HF_TOKEN`` is a fake token; ``fake_hub.env`` is the environment for subprocesses.
    """
    fake_hub_server.reset()
    fake_hub_server.env = point_hub_client_at(monkeypatch, fake_hub_server.url, tmp_path / "hf_home")
    return fake_hub_server


@pytest.fixture
def loopback_server():
    """A fresh server for this test alone, nothing pointed at it: its own repos, URL files
    (``url_files``), misbehaviours and request log."""
    with FakeHub() as server:
        yield server


@pytest.fixture(scope="session")
def official_dcls():
    """The official ``DCLS.construct.modules`` (dcls 0.1.1, the oracle); a test that asks for it is
    skipped alone where the package is not installed (or ``DCLS_ZOO_TESTS_HIDE_ORACLE`` is set)."""
    modules = official_dcls_modules()
    if modules is None:
        pytest.skip(ORACLE_MISSING)
    return modules
