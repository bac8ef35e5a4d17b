"""``hubconf.py``: torch.hub's list/help/load on the checkout, offline.

The GitHub path (``"owner/repo:ref"``) is exercised without any network call: torch.hub's cache
directory is a temporary one holding ``<owner>_<repo>_<ref>`` (a symlink to this checkout), which
torch.hub uses as the downloaded repo when the ref is explicit. The guard from
``test_pretrained`` refuses any non-loopback connection here too.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from pathlib import Path

import pytest
import timm
import torch
from helpers import ROOT

import dcls_zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pretrained import SMALL, TINY, caches, logits, no_network, serve_authors_file, server, source_model  # noqa: E402  (fixtures and helpers shared with the pretrained tests)

__all__ = ["caches", "no_network", "server"]  # fixtures used here

GITHUB = "dcls-org/dcls-zoo:v0.1"


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch.hub's directory with this checkout as the cached GitHub repo ``dcls-org/dcls-zoo`` at ``v0.1``."""
    directory = tmp_path / "torch_hub"
    directory.mkdir()
    os.symlink(ROOT, directory / "dcls-org_dcls-zoo_v0.1", target_is_directory=True)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(directory))
    return directory


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_list_shows_every_registered_model(hub_dir):
    names = torch.hub.list(GITHUB, trust_repo=True, verbose=False)
    assert sorted(names) == sorted([*dcls_zoo.list_models(), "create_model"])
    assert {"convnext_dcls_tiny", "convnext_dcls_gauss_tiny", "convnext_tiny_dil2", "convnext_tiny_k17",
            "convnext_k7_atto", "resnet50_dcls"} <= set(names)


def test_module_exposes_only_entrypoints_and_dependencies():
    hubconf = _hubconf()
    public = {name for name in dir(hubconf) if not name.startswith("_")}
    assert public == set(dcls_zoo.list_models()) | {"dependencies", "create_model"}
    assert hubconf.dependencies == ["torch", "timm", "huggingface_hub", "safetensors"]
    for dependency in hubconf.dependencies:
        assert importlib.util.find_spec(dependency) is not None
    entry = hubconf.convnext_dcls_tiny
    assert entry.__name__ == "convnext_dcls_tiny" and entry.__module__ == "hubconf_under_test"
    assert list(inspect.signature(entry).parameters) == ["pretrained", "revision", "num_classes", "kwargs"]


def test_help_shows_a_real_docstring(hub_dir):
    for name in dcls_zoo.list_models():
        doc = torch.hub.help(GITHUB, name, trust_repo=True)
        registered = timm.models.model_entrypoint(name).__doc__.strip()
        assert doc.startswith(registered), name
        for needed in ("pretrained:", "revision:", "num_classes:", "**kwargs:", "Returns:", f'"{name}"'):
            assert needed in doc, (name, needed)
    tiny = torch.hub.help(GITHUB, "convnext_dcls_tiny", trust_repo=True)
    assert "Hugging Face Hub dcls-zoo/convnext_dcls_tiny.in1k" in tiny
    assert "convnext_dcls_tiny_1k_224_ema.pth" in tiny and "17x17 window" in tiny
    assert "No pretrained weights" in torch.hub.help(GITHUB, "convnext_dcls_atto", trust_repo=True)


def test_load_from_the_github_path(hub_dir):
    model = torch.hub.load(GITHUB, "convnext_dcls_atto", num_classes=10, trust_repo=True, verbose=False)
    assert isinstance(model, dcls_zoo.models.ConvNeXtDcls) and model.head.fc.out_features == 10
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(RuntimeError, match="Cannot find callable convnext_dcls_huge in hubconf"):
        torch.hub.load(GITHUB, "convnext_dcls_huge", trust_repo=True, verbose=False)


def test_load_from_a_local_checkout():
    model = torch.hub.load(str(ROOT), "convnext_k7_atto", source="local", num_classes=5, stem="small")
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    features = torch.hub.load(
        str(ROOT), "resnet50_dcls", source="local", features_only=True, out_indices=(1,), layers=(1, 1, 1, 1)
    )
    with torch.no_grad():
        assert features(torch.randn(1, 3, 64, 64))[0].shape[1] == 256
    with pytest.raises(ValueError, match="pass pretrained=True"):
        torch.hub.load(str(ROOT), "convnext_dcls_tiny", source="local", revision="main")


def test_pretrained_through_torch_hub(server, caches, hub_dir, tmp_path):
    # torch.hub.load(..., pretrained=True): the Hub repo 404s (not published), the authors' file
    # from the loopback mirror is converted; both hubconf paths give the source model's logits.
    source = source_model(TINY, seed=21)
    serve_authors_file(server, TINY, source, tmp_path)
    expected = logits(source)
    local = torch.hub.load(str(ROOT), TINY, source="local", pretrained=True, **SMALL)
    torch.testing.assert_close(logits(local), expected)
    remote = torch.hub.load(GITHUB, TINY, pretrained="in1k", trust_repo=True, verbose=False, **SMALL)
    torch.testing.assert_close(logits(remote), expected)
