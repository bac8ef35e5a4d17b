"""Hub export and push: save_pretrained, push_to_hub, ``dcls-zoo push``, against a loopback fake Hub.

The real huggingface_hub and timm code paths run unmodified; ``fake_hub`` (conftest) points them at
a stdlib HTTP server on 127.0.0.1, so nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml
from helpers import ROOT, FakeHub, point_hub_client_at
from safetensors import safe_open

import dcls_zoo
from dcls_zoo.errors import HubUnreachableError, PushError
from dcls_zoo.export_format import PICKLE_SUFFIXES
from dcls_zoo.state_dicts import clean_state_dict
from lightning_modules import checkpoints
from lightning_modules.commands.main import main

ARCH = "convnext_dcls_atto"
EXPORT_FILES = {"config.json", "model.safetensors", "README.md", "positions.png"}
_names = itertools.count()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any in-process connection to an address other than the loopback."""
    connect = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = host == "localhost"
            if not loopback:
                raise OSError(f"test tried to connect to {address}; only the loopback is allowed")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def _repo(stem: str) -> str:
    return f"dcls-test/{stem}-{next(_names)}"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = dcls_zoo.create_model(ARCH, num_classes=5).eval()
    with torch.no_grad():  # positions away from their initial cluster, as after training
        for name, parameter in net.named_parameters():
            if name.endswith(".P"):
                parameter.add_(torch.randn_like(parameter) * 3)
    dcls_zoo.clamp_model_positions_(net)
    return net


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _logits(net, images):
    with torch.no_grad():
        return net.eval()(images)


def _assert_same_model(loaded, reference, images):
    assert loaded.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(_logits(loaded, images), _logits(reference, images))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---", 2)[1])


def _run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", textwrap.dedent(script), *args] if script else [sys.executable, *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------------
# save_pretrained
# ---------------------------------------------------------------------------------------------


def test_save_pretrained_round_trip_through_local_dir(model, images, tmp_path):
    card = {"dataset": "cifar10", "metrics": {"top-1": 91.25}, "training": {"epochs": 100, "optimizer": "AdamW"},
            "tags": ["cifar"]}
    out = dcls_zoo.save_pretrained(model, tmp_path / "export", model_card=card, label_names=list("abcde"))

    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    assert not [p for p in out.rglob("*") if p.suffix in PICKLE_SUFFIXES]

    with safe_open(out / "model.safetensors", "pt") as weights:
        keys, metadata = set(weights.keys()), weights.metadata()
    assert keys == set(model.state_dict())
    positions = sorted(k for k in keys if k.endswith(".P"))
    assert positions == [f"stages.{i}.dcls_shared.conv_dw.P" for i in range(4)]  # once per stage
    assert set(metadata) == {"dcls_zoo"}  # one entry: the same weights give the same bytes
    record = json.loads(metadata["dcls_zoo"])["provenance"]
    assert record["architecture"] == ARCH
    assert record["versions"] == {"dcls_zoo": dcls_zoo.__version__, "torch": torch.__version__, "timm": timm.__version__}
    assert record["dcls_settings"]["window"] == "17x17"

    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == ARCH and config["num_classes"] == 5
    assert config["model_args"]["num_classes"] == 5
    assert config["label_names"] == list("abcde")
    assert config["pretrained_cfg"]["mean"] == list(timm.data.IMAGENET_DEFAULT_MEAN)

    text = (out / "README.md").read_text()
    front = _front_matter(text)
    assert front["library_name"] == "timm" and front["pipeline_tag"] == "image-classification"
    assert {"dcls", "image-classification", "cifar"} <= set(front["tags"])
    assert front["license"] == "mit" and front["datasets"] == ["cifar10"]
    kernel_count = model.dclsify_report.kernel_count
    for needle in ("Khalfaoui-Hassani", "Pellegrini", "Masquelier", "Dilated convolution with learnable spacings",
                   "International Conference on Learning Representations", "17x17", f"| {kernel_count} |",
                   "bilinear", "shared per stage", "](positions.png)", "91.25", "AdamW", "cifar10"):
        assert needle in text, needle
    assert (out / "positions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for load in (timm.create_model, dcls_zoo.create_model):
        loaded = load(f"local-dir:{out}", pretrained=True)
        _assert_same_model(loaded, model, images)
        assert loaded.pretrained_cfg["label_names"] == list("abcde")


def test_save_pretrained_refuses_what_it_cannot_rebuild(model, tmp_path):
    plain = timm.create_model("convnext_atto", num_classes=5)
    dcls_zoo.dclsify(plain, 17)  # a DCLS model the registered convnext_atto does not rebuild
    with pytest.raises(ValueError, match="dclsify"):
        dcls_zoo.save_pretrained(plain, tmp_path / "a")
    with pytest.raises(ValueError, match="create_model"):
        dcls_zoo.save_pretrained(dcls_zoo.models.ConvNeXtDcls(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)), tmp_path / "b")
    with pytest.raises(ValueError, match="unknown model_card keys"):
        dcls_zoo.save_pretrained(model, tmp_path / "c", model_card={"datasets": "cifar10"})
    with pytest.raises(ValueError, match="label_names"):
        dcls_zoo.save_pretrained(model, tmp_path / "d", label_names=["a", "b"])
    assert not any((tmp_path / name).exists() for name in "abcd")


# ---------------------------------------------------------------------------------------------
# push_to_hub against the fake Hub
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("disable_xet", [False, True], ids=["xet-pipeline", "HF_HUB_DISABLE_XET"])
def test_push_then_hf_hub_load_reproduces_logits(fake_hub, model, images, tmp_path, monkeypatch, disable_xet):
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils._runtime import is_xet_available

    # Read at call time from the constants (set from the variable at import): patch it there.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", disable_xet)
    commits = []
    original = HfApi.create_commit
    monkeypatch.setattr(HfApi, "create_commit", lambda self, *a, **k: commits.append(k) or original(self, *a, **k))
    repo_id = _repo("push")

    result = dcls_zoo.push_to_hub(model, repo_id, local_dir=tmp_path / "export",
                                  model_card={"dataset": "cifar10"}, label_names=list("vwxyz"))

    assert result.repo_id == repo_id and result.revision == "main" and result.commit_oid
    assert Path(result) == (tmp_path / "export").resolve() and {p.name for p in result.local_dir.iterdir()} == EXPORT_FILES
    # the single-commit path runs exactly when Xet is unavailable; the pipeline otherwise
    assert bool(commits) == (not is_xet_available())
    files = fake_hub.files(repo_id)
    assert set(files) == EXPORT_FILES | {".gitattributes"}
    assert files["README.md"] == (tmp_path / "export" / "README.md").read_bytes()
    assert "hf-hub:" + repo_id in files["README.md"].decode()
    writes = [auth for (method, path), auth in zip(fake_hub.requests, fake_hub.authorizations) if method == "POST"
              and "validate-yaml" not in path]
    assert writes and set(writes) == {"hf_fake_test_token"}
    assert ("POST", "/api/validate-yaml") in fake_hub.requests  # the card's YAML was checked by the server

    for load in (timm.create_model, dcls_zoo.create_model):
        loaded = load(f"hf-hub:{repo_id}", pretrained=True)
        _assert_same_model(loaded, model, images)
        assert loaded.pretrained_cfg["label_names"] == list("vwxyz")


def test_push_to_a_branch_and_pin_a_commit(fake_hub, model, images, tmp_path):
    repo_id = _repo("branch")
    first = dcls_zoo.push_to_hub(model, repo_id, revision="experiment", local_dir=tmp_path / "export")
    assert first.revision == "experiment"
    assert set(fake_hub.files(repo_id, "main")) == {".gitattributes"}
    _assert_same_model(dcls_zoo.create_model(f"hf-hub:{repo_id}@experiment", pretrained=True), model, images)
    _assert_same_model(dcls_zoo.create_model(f"hf-hub:{repo_id}@{first.commit_oid}", pretrained=True), model, images)


def test_snapshot_download_fetches_the_whole_export(fake_hub, model, tmp_path):
    from huggingface_hub import snapshot_download

    repo_id = _repo("snapshot")
    pushed = dcls_zoo.push_to_hub(model, repo_id, local_dir=tmp_path / "export")
    snapshot = Path(snapshot_download(repo_id, cache_dir=tmp_path / "cache"))
    assert EXPORT_FILES <= {p.name for p in snapshot.iterdir()}
    for name in EXPORT_FILES:
        assert (snapshot / name).read_bytes() == (pushed.local_dir / name).read_bytes()


def test_offline_reuse_of_the_cache_in_a_fresh_process(fake_hub, model, images, tmp_path):
    repo_id = _repo("offline")
    dcls_zoo.push_to_hub(model, repo_id, local_dir=tmp_path / "export")
    dcls_zoo.create_model(f"hf-hub:{repo_id}", pretrained=True)  # fills the cache
    torch.save({"images": images, "logits": _logits(model, images)}, tmp_path / "expected.pt")
    fake_hub.requests.clear()

    env = dict(fake_hub.env, HF_HUB_OFFLINE="1")
    script = """
        import sys, torch, dcls_zoo
        expected = torch.load(sys.argv[2], weights_only=True)
        model = dcls_zoo.create_model("hf-hub:" + sys.argv[1], pretrained=True).eval()
        with torch.no_grad():
            assert torch.equal(model(expected["images"]), expected["logits"])
        print("offline ok")
    """
    done = _run(script, env, repo_id, str(tmp_path / "expected.pt"))
    assert done.returncode == 0, done.stderr
    assert "offline ok" in done.stdout
    assert fake_hub.requests == []  # HF_HUB_OFFLINE: the hub was never asked


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


def test_push_without_token_fails_before_any_work(fake_hub, model, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    assert not Path(constants.HF_TOKEN_PATH).exists()
    with pytest.raises(ValueError, match="token.*HF_TOKEN.*hf auth login"):
        dcls_zoo.push_to_hub(model, _repo("notoken"), local_dir=tmp_path / "export")
    assert not (tmp_path / "export").exists()

    dcls_zoo.save_pretrained(model, tmp_path / "saved")
    assert main(["push", str(tmp_path / "saved"), "--repo-id", _repo("notoken")]) == 1
    assert "needs a write token" in capsys.readouterr().err
    assert fake_hub.requests == []


def test_unreachable_hub_keeps_the_export_and_says_how_to_retry(model, tmp_path, monkeypatch):
    point_hub_client_at(monkeypatch, f"http://127.0.0.1:{_free_port()}", tmp_path / "hf_home")
    export = tmp_path / "export"
    with pytest.raises(PushError) as caught:
        dcls_zoo.push_to_hub(model, "dcls-test/unreachable", local_dir=export, revision="dev", private=True)
    message = str(caught.value)
    assert f"The local export is intact at {export.resolve()}" in message
    assert f"dcls-zoo push {export.resolve()} --repo-id dcls-test/unreachable --revision dev --private" in message
    assert caught.value.local_dir == export.resolve()
    assert {p.name for p in export.iterdir()} == EXPORT_FILES


@pytest.fixture
def no_backoff(monkeypatch):
    """The client's retries on network errors (5, over ~23 s), without the waiting."""
    import huggingface_hub.utils._http as http

    class NoWait:
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(seconds):
            pass

    monkeypatch.setattr(http, "time", NoWait())


def test_hub_dying_mid_push_keeps_the_export(model, tmp_path, monkeypatch, no_backoff):
    with FakeHub() as hub:
        point_hub_client_at(monkeypatch, hub.url, tmp_path / "hf_home")
        hub.die_after = "/api/repos/create"  # answers the repo creation, then drops every request
        export = tmp_path / "export"
        with pytest.raises(PushError, match="intact at") as caught:
            dcls_zoo.push_to_hub(model, "dcls-test/dying", local_dir=export)
        assert ("POST", "/api/repos/create") in hub.requests
    assert str(export.resolve()) in str(caught.value)
    assert {p.name for p in export.iterdir()} == EXPORT_FILES
    loaded = dcls_zoo.create_model(f"local-dir:{export}", pretrained=True)  # the export is usable as is
    assert torch.equal(loaded.state_dict()["stages.0.dcls_shared.conv_dw.P"], model.state_dict()["stages.0.dcls_shared.conv_dw.P"])


@pytest.mark.parametrize("offline", [False, True], ids=["unreachable", "HF_HUB_OFFLINE"])
def test_download_without_hub_or_cache_explains_the_ways_out(tmp_path, monkeypatch, no_backoff, offline):
    from huggingface_hub import constants

    point_hub_client_at(monkeypatch, f"http://127.0.0.1:{_free_port()}", tmp_path / "hf_home")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    with pytest.raises(HubUnreachableError) as caught:
        dcls_zoo.create_model("hf-hub:dcls-test/missing", pretrained=True)  # wraps timm's loader
    message = str(caught.value)
    for needle in ("HF_HUB_OFFLINE=1", "HF_ENDPOINT", "HF_HUB_CACHE", "local-dir:", str(tmp_path / "hf_home" / "hub")):
        assert needle in message, needle
    assert ("HF_HUB_OFFLINE is set" in message) == offline


# ---------------------------------------------------------------------------------------------
# dcls-zoo push
# ---------------------------------------------------------------------------------------------


def test_cli_push_export_dir_end_to_end(fake_hub, model, images, tmp_path):
    export = dcls_zoo.save_pretrained(model, tmp_path / "export")
    repo_id = _repo("cli")
    # A fresh process configured by the environment alone (read at import), on the single-commit path.
    env = dict(fake_hub.env, HF_HUB_DISABLE_XET="1")
    done = _run("", env, "-m", "lightning_modules", "push", str(export), "--repo-id", repo_id, "--revision", "v1")
    assert done.returncode == 0, done.stderr
    assert f"pushed to {repo_id}@v1" in done.stdout
    assert set(fake_hub.files(repo_id, "v1")) == EXPORT_FILES | {".gitattributes"}
    _assert_same_model(dcls_zoo.create_model(f"hf-hub:{repo_id}@v1", pretrained=True), model, images)


def test_cli_push_refuses_an_export_with_pickles(fake_hub, model, tmp_path, capsys):
    export = dcls_zoo.save_pretrained(model, tmp_path / "export")
    torch.save(model.state_dict(), export / "pytorch_model.bin")
    assert main(["push", str(export), "--repo-id", _repo("pickle")]) == 1
    assert "pickle files ['pytorch_model.bin']" in capsys.readouterr().err
    assert fake_hub.requests == []


def _lightning_checkpoint(path: Path, model, ema_model=None, **extra) -> Path:
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["criterion.weight"] = torch.ones(5)  # another LightningModule attribute: ignored
    checkpoint = {"epoch": 3, "global_step": 120, "state_dict": state,
                  "hyper_parameters": {"arch": ARCH, "num_classes": 5, "lr": 4e-3}, **extra}
    if ema_model is not None:  # Lightning's WeightAveraging layout: averaged weights in state_dict
        checkpoint["current_model_state"] = state
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in ema_model.state_dict().items()}
        checkpoint["state_dict"]["criterion.weight"] = torch.ones(5)
        checkpoint["averaging_state"] = {"n_averaged": torch.tensor(120)}
    torch.save(checkpoint, path)
    return path


def test_cli_push_lightning_checkpoint_with_and_without_ema(fake_hub, model, images, tmp_path, capsys):
    ema = dcls_zoo.create_model(ARCH, num_classes=5).eval()
    ckpt = _lightning_checkpoint(tmp_path / "last.ckpt", model, ema_model=ema)
    repo_id = _repo("ckpt")

    assert main(["push", str(ckpt), "--repo-id", repo_id]) == 0  # default: the EMA weights
    output = capsys.readouterr().out
    assert "EMA weights from Lightning WeightAveraging" in output and "1 other entries ignored" in output
    assert (tmp_path / "last-export" / "model.safetensors").is_file()  # kept beside the checkpoint
    _assert_same_model(dcls_zoo.create_model(f"hf-hub:{repo_id}", pretrained=True), ema, images)

    out = tmp_path / "raw-export"
    assert main(["push", str(ckpt), "--repo-id", repo_id, "--no-ema", "--revision", "raw", "--out", str(out)]) == 0
    assert "raw weights (current_model_state)" in capsys.readouterr().out
    _assert_same_model(dcls_zoo.create_model(f"hf-hub:{repo_id}@raw", pretrained=True), model, images)


def test_cli_push_checkpoint_errors(fake_hub, model, tmp_path, capsys):
    plain = _lightning_checkpoint(tmp_path / "plain.ckpt", model)
    assert main(["push", str(plain), "--repo-id", _repo("x"), "--ema"]) == 1
    assert "no EMA weights" in capsys.readouterr().err
    assert main(["push", str(plain), "--repo-id", _repo("x"), "--arch", "convnext_dcls_femto"]) == 1
    assert "convnext_dcls_femto" in capsys.readouterr().err  # strict load names the mismatch
    unsafe = _lightning_checkpoint(tmp_path / "unsafe.ckpt", model, datamodule=argparse.Namespace(a=1))
    assert main(["push", str(unsafe), "--repo-id", _repo("x")]) == 1
    assert "refusing to load" in capsys.readouterr().err
    assert fake_hub.requests == []


def test_checkpoint_weight_selection():
    raw, ema = {"model.w": 1}, {"model.w": 2}
    select = checkpoints.select_weights
    assert select({"state_dict": raw}, None) == (raw, "raw weights (state_dict)")
    assert select({"state_dict": raw, "state_dict_ema": ema}, None)[0] is ema
    assert select({"state_dict": raw, "ema_state_dict": ema}, False)[0] is raw
    averaged = {"state_dict": ema, "current_model_state": raw, "averaging_state": {}}
    assert select(averaged, True)[0] is ema and select(averaged, False)[0] is raw
    with pytest.raises(ValueError, match="no EMA"):
        select({"state_dict": raw}, True)
    assert clean_state_dict({"net.a": 1, "net.b": 2, "loss.c": 3}) == ({"a": 1, "b": 2}, "net.", 1)
    assert clean_state_dict({"a": 1}) == ({"a": 1}, "", 0)
    # wrapper prefixes on every key (DDP, torch.compile) go too, in either order
    assert clean_state_dict({"model.module._orig_mod.a": 1}) == ({"a": 1}, "model.", 0)
