"""Shared fixtures: a loopback fake Hugging Face Hub (see ``fake_hub.py``) and an environment pointing at it."""

from __future__ import annotations

import os
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

from fake_hub import FakeHub  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


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


def point_hub_client_at(monkeypatch: pytest.MonkeyPatch, url: str, home: Path) -> dict[str, str]:
    """Point huggingface_hub at ``url`` with its home (cache, token file) under ``home``.

    huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` & co. into ``huggingface_hub.constants`` at
    import, so the module attributes are patched (every path derived from the old home too) and
    the variables are set for subprocesses, which get the returned environment.
    """
    from huggingface_hub import constants

    old_home = constants.HF_HOME
    for name in dir(constants):
        value = getattr(constants, name)
        if name.isupper() and isinstance(value, str) and value.startswith(old_home):
            monkeypatch.setattr(constants, name, str(home) + value[len(old_home) :])
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    variables = {
        "HF_ENDPOINT": url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN": "hf_fake_test_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    return dict(os.environ)


@pytest.fixture
def fake_hub(fake_hub_server, monkeypatch, tmp_path):
    """The session's fake Hub, its request log cleared, with the client pointed at it.

    ``HF_TOKEN`` is a fake token; ``fake_hub.env`` is the environment for subprocesses.
    """
    fake_hub_server.requests.clear()
    fake_hub_server.authorizations.clear()
    fake_hub_server.env = point_hub_client_at(monkeypatch, fake_hub_server.url, tmp_path / "hf_home")
    return fake_hub_server
