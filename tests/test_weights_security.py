"""Weights from the wild: hostile names, hostile checkpoints, links, silent servers, broken files.

Every server here is loopback, the one of ``helpers.py``: for URL files, as the fake Hub for Hub
repos, and silent (it takes every request and never answers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import QUICK_FIT, QUICKSTART, ROOT, point_hub_client_at

import dcls_zoo
from dcls_zoo.errors import (
    ChecksumMismatchError,
    HubUnreachableError,
    PretrainedWeightsError,
    UnsafeFileNameError,
    WeightsFileError,
    WeightsReadError,
)
from dcls_zoo.state_dicts import confined_path, sha256_file
from dcls_zoo.weights import network
from dcls_zoo.weights.url_files import url_file, url_file_name
from lightning_modules.checkpoints import load_checkpoint
from lightning_modules.commands.main import main
from lightning_modules.module import ImageClassifier

ARCH = "convnext_dcls_atto"


# ------------------------------------------------------------------------------------------
# loopback servers (helpers.FakeHub)


@pytest.fixture
def file_server(loopback_server):
    """URL files: ``file_server.url_files[raw path] = bytes``; ``requests`` logs every request."""
    return loopback_server


@pytest.fixture
def silent_hub(loopback_server, monkeypatch, tmp_path):
    """huggingface_hub pointed at a server that takes every request and never answers, with a private cache."""
    loopback_server.silent = True
    point_hub_client_at(monkeypatch, loopback_server.url, tmp_path / "hf_home")
    return loopback_server


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """A private torch hub dir (URL downloads land in <it>/checkpoints)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    return tmp_path / "torch" / "checkpoints"


def _atto_state_file(path: Path) -> Path:
    from safetensors.torch import save_file

    model = dcls_zoo.create_model(ARCH, num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


# ------------------------------------------------------------------------------------------
# 1a. a file name from a URL stays in its directory


@pytest.mark.parametrize(
    "name",
    ["%2Ftmp%2Fowned.pth", "..%2F..%2Fowned.pth", "%2E%2E", "a%5Cb.pth", "x%00.pth", "..", "%2e%2e%2fowned.pth"],
)
def test_url_file_names_that_would_leave_the_cache_are_refused(name):
    with pytest.raises(UnsafeFileNameError, match="plain name|no file name"):
        url_file_name(f"http://127.0.0.1:1/files/{name}")


def test_plain_url_file_names_are_decoded():
    assert url_file_name("http://h/files/convnext%20tiny.pth?x=1") == "convnext tiny.pth"
    assert url_file_name("http://h/a/b/model.safetensors") == "model.safetensors"


def test_a_percent_2f_url_writes_nothing_outside_the_cache(file_server, caches, tmp_path):
    target = tmp_path / "outside" / "owned.pth"
    target.parent.mkdir()
    hostile = "/files/" + str(target).replace("/", "%2F")
    file_server.url_files[hostile] = b"import os  # would run at the next interpreter start"
    url = file_server.url + hostile
    with pytest.raises(UnsafeFileNameError, match="plain name"):
        dcls_zoo.create_model(ARCH, pretrained=True, pretrained_cfg_overlay={"url": url})
    assert not target.exists()
    assert file_server.requests == []  # refused before any request
    assert not caches.exists() or list(caches.iterdir()) == []


def test_a_symlink_planted_in_the_cache_is_not_followed(caches, tmp_path):
    caches.mkdir(parents=True)
    outside = tmp_path / "elsewhere.pth"
    (caches / "weights.pth").symlink_to(outside)
    with pytest.raises(UnsafeFileNameError, match="resolves outside"):
        confined_path(caches, "weights.pth")


def test_an_explicit_url_still_loads_when_its_name_is_plain(file_server, caches, tmp_path):
    weights = _atto_state_file(tmp_path / "atto.safetensors")
    file_server.url_files["/files/atto.safetensors"] = weights.read_bytes()
    model = dcls_zoo.create_model(
        ARCH, pretrained=True, num_classes=10, pretrained_cfg_overlay={"url": file_server.url + "/files/atto.safetensors"}
    )
    assert (caches / "atto.safetensors").is_file()
    from safetensors.torch import load_file

    for key, value in load_file(weights).items():
        if not key.startswith("head.fc."):  # timm starts a head of another class count than the config's afresh
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# 1b. rebuilding from saved weights never downloads


def _hostile_checkpoint(path: Path, url: str, **hparams) -> Path:
    """A checkpoint of plain data only (passes weights_only) whose model arguments ask for a download."""
    model = dcls_zoo.create_model(ARCH, num_classes=10, in_chans=1)
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {
            "arch": ARCH,
            "num_classes": 10,
            "in_chans": 1,
            "model_kwargs": {"pretrained": True, "pretrained_cfg_overlay": {"url": url}},
            **hparams,
        },
        "pytorch-lightning_version": "2.6.6",
    }
    torch.save(checkpoint, path)
    load_checkpoint(path)  # plain data: the safe loader reads it
    return path


def test_a_checkpoint_with_download_arguments_downloads_nothing_on_load(file_server, caches, tmp_path, caplog):
    target = tmp_path / "owned.pth"
    url = file_server.url + "/files/" + str(target).replace("/", "%2F")
    ckpt = _hostile_checkpoint(tmp_path / "hostile.ckpt", url, pretrained="in1k")
    with caplog.at_level("WARNING"):
        module = ImageClassifier.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu")
    assert file_server.requests == [] and not target.exists()
    assert "ignoring the model arguments pretrained, pretrained_cfg_overlay" in caplog.text
    assert "ignoring pretrained='in1k'" in caplog.text
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_export_of_a_hostile_checkpoint_downloads_nothing(file_server, caches, tmp_path):
    target = tmp_path / "owned.pth"
    url = file_server.url + "/files/" + str(target).replace("/", "%2F")
    ckpt = _hostile_checkpoint(tmp_path / "hostile.ckpt", url)
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "export", str(ckpt), "--out", str(tmp_path / "export")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "ignoring the model arguments pretrained, pretrained_cfg_overlay" in result.stderr
    assert file_server.requests == [] and not target.exists()
    assert (tmp_path / "export" / "model.safetensors").is_file()


def test_push_of_a_hostile_checkpoint_downloads_nothing(file_server, caches, fake_hub, tmp_path):
    target = tmp_path / "owned.pth"
    url = file_server.url + "/files/" + str(target).replace("/", "%2F")
    ckpt = _hostile_checkpoint(tmp_path / "hostile.ckpt", url, pretrained="hf-hub:attacker/weights")
    assert main(["push", str(ckpt), "--repo-id", "tester/pushed"]) == 0
    assert file_server.requests == [] and not target.exists()
    assert not [r for r in fake_hub.requests if "attacker" in r[1]]  # only the upload reached the Hub


@pytest.mark.slow
def test_cli_test_of_a_hostile_checkpoint_downloads_nothing(file_server, tmp_path):
    target = tmp_path / "owned.pth"
    url = file_server.url + "/files/" + str(target).replace("/", "%2F")
    ckpt = _hostile_checkpoint(tmp_path / "hostile.ckpt", url, pretrained="in1k")
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"))
    result = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "test", "-c", QUICKSTART,
         f"--ckpt_path={ckpt}", "--trainer.limit_test_batches=2", "--trainer.enable_progress_bar=false"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ignoring the model arguments pretrained, pretrained_cfg_overlay" in result.stderr
    assert file_server.requests == [] and not target.exists()


def test_a_checkpoint_whose_arch_is_a_download_source_is_refused(tmp_path):
    ckpt = _hostile_checkpoint(tmp_path / "hub.ckpt", "http://127.0.0.1:1/x.pth", arch="hf-hub:attacker/repo")
    assert main(["export", str(ckpt), "--out", str(tmp_path / "out")]) == 1
    with pytest.raises(ValueError, match="download source"):
        ImageClassifier.load_from_checkpoint(ckpt, weights_only=True)


def test_fit_refuses_weight_sources_in_model_kwargs():
    with pytest.raises(ValueError, match=r"model_kwargs: pretrained_cfg_overlay .*as pretrained=\.\.\."):
        ImageClassifier(arch=ARCH, num_classes=10, model_kwargs={"pretrained_cfg_overlay": {"url": "http://x/y.pth"}})


# ------------------------------------------------------------------------------------------
# 2. push never follows a link out of the export


def test_push_refuses_a_symlink_before_any_request(fake_hub, tmp_path, capsys):
    export = tmp_path / "export"
    dcls_zoo.save_pretrained(dcls_zoo.create_model(ARCH, num_classes=3), export)
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_the_users_real_token")
    (export / "notes.txt").symlink_to(secret)
    assert main(["push", str(export), "--repo-id", "tester/linked"]) == 1
    error = capsys.readouterr().err
    assert "symlinks notes.txt" in error and "regular files only" in error
    assert fake_hub.requests == []
    (export / "notes.txt").unlink()
    linked_dir = tmp_path / "linked-export"
    linked_dir.symlink_to(export)
    assert main(["push", str(linked_dir), "--repo-id", "tester/linked"]) == 1
    assert "is a symlink" in capsys.readouterr().err
    assert fake_hub.requests == []


# ------------------------------------------------------------------------------------------
# 3. a Hub that never answers


def test_a_silent_hub_fails_within_the_limit(silent_hub, monkeypatch):
    monkeypatch.setenv(network.TIMEOUT_ENV, "1.5")
    start = time.monotonic()
    with pytest.raises(HubUnreachableError) as info:
        dcls_zoo.create_model("hf-hub:tester/silent", pretrained=True)
    elapsed = time.monotonic() - start
    # huggingface_hub alone waits 60 s per try, 6 tries, with 1-8 s sleeps between them (about 400 s)
    assert elapsed < 1.5 + 5, elapsed
    message = str(info.value)
    assert "HF_HUB_OFFLINE=1" in message and "HF_ENDPOINT" in message and f"raise {network.TIMEOUT_ENV}" in message
    assert "no answer from the server for 1.5 s" in message


def test_the_limit_is_between_answers_not_for_the_whole_transfer(monkeypatch, caches, loopback_server):
    """A slow but live download (each chunk well within the limit, the whole longer) completes."""
    body = os.urandom(6 * 1024)
    loopback_server.url_files["/slow.bin"] = body
    loopback_server.chunk_delay = 0.3  # 1 KiB chunks
    monkeypatch.setenv(network.TIMEOUT_ENV, "1")
    start = time.monotonic()
    path = url_file(f"{loopback_server.url}/slow.bin", progress=False)
    assert time.monotonic() - start > 1.5  # longer than the limit in total
    assert path.read_bytes() == body


def test_a_bad_timeout_value_is_named(monkeypatch):
    monkeypatch.setenv(network.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="DCLS_ZOO_HUB_TIMEOUT='soon': expected a positive number"):
        network.hub_timeout()


# ------------------------------------------------------------------------------------------
# 4. corrupt files are named


def test_a_truncated_export_is_named(tmp_path):
    export = tmp_path / "export"
    dcls_zoo.save_pretrained(dcls_zoo.create_model(ARCH, num_classes=3), export)
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ChecksumMismatchError, match=r"sha256 mismatch for local-dir:.*model\.safetensors"):
        dcls_zoo.create_model(f"local-dir:{export}", pretrained=True)
    # without recorded checksums (an export written by timm): the truncation itself is named
    config = json.loads((export / "config.json").read_text())
    del config["dcls_zoo"]
    (export / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsFileError, match=r"model\.safetensors .*truncated or not a safetensors file"):
        dcls_zoo.create_model(f"local-dir:{export}", pretrained=True)


def test_a_garbled_config_is_named(tmp_path):
    export = tmp_path / "export"
    dcls_zoo.save_pretrained(dcls_zoo.create_model(ARCH, num_classes=3), export)
    (export / "config.json").write_text('{"architecture": "convnext_dcls_atto",')
    with pytest.raises(WeightsFileError, match=r"config\.json is not valid JSON"):
        dcls_zoo.create_model(f"local-dir:{export}", pretrained=True)


def test_a_truncated_authors_file_is_named_by_convert(tmp_path, capsys):
    model = dcls_zoo.create_model(ARCH, num_classes=10)
    full = tmp_path / "official.pth"
    torch.save({"model": model.state_dict()}, full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[:1000])
    assert main(["convert", str(cut), "--arch", ARCH, "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert f"cannot read the authors' checkpoint '{cut}'" in error and "truncated or corrupted" in error
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert main(["convert", str(empty), "--arch", ARCH, "--out", str(tmp_path / "out")]) == 1
    assert "truncated or corrupted" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# 5. a tampered export is refused where dcls-zoo loads it


def test_a_tampered_export_is_refused_and_an_untouched_one_loads(tmp_path, fake_hub):
    model = dcls_zoo.create_model(ARCH, num_classes=3).eval()
    export = tmp_path / "export"
    dcls_zoo.save_pretrained(model, export)
    recorded = json.loads((export / "config.json").read_text())["dcls_zoo"]["files"]["model.safetensors"]
    assert recorded["sha256"] == sha256_file(export / "model.safetensors")

    dcls_zoo.create_model(f"local-dir:{export}", pretrained=True)  # untouched: loads
    from safetensors.torch import load_file, save_file

    state = load_file(export / "model.safetensors")
    state["head.fc.bias"] = state["head.fc.bias"] + 1.0  # a well-formed file with other weights
    save_file(state, export / "model.safetensors")
    with pytest.raises(ChecksumMismatchError, match="sha256 mismatch"):
        dcls_zoo.create_model(f"local-dir:{export}", pretrained=True)
    # fine-tuning from the export directory checks it too
    with pytest.raises(ValueError, match="sha256 mismatch"):
        ImageClassifier(arch=ARCH, num_classes=3, pretrained=str(export))
    # and push refuses to upload it
    assert main(["push", str(export), "--repo-id", "tester/tampered"]) == 1
    assert fake_hub.requests == []


def test_a_tampered_hub_repo_is_refused(tmp_path, fake_hub):
    model = dcls_zoo.create_model(ARCH, num_classes=3).eval()
    result = dcls_zoo.push_to_hub(model, "tester/checked", local_dir=tmp_path / "export")
    loaded = dcls_zoo.create_model("hf-hub:tester/checked", pretrained=True).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    # the weights on the Hub change behind the recorded checksum
    from safetensors.torch import load_file, save_file

    state = load_file(Path(result.local_dir) / "model.safetensors")
    state["head.fc.bias"] = state["head.fc.bias"] - 1.0
    save_file(state, tmp_path / "other.safetensors")
    from huggingface_hub import HfApi

    HfApi().upload_file(path_or_fileobj=tmp_path / "other.safetensors", path_in_repo="model.safetensors",
                        repo_id="tester/checked")
    with pytest.raises(ChecksumMismatchError, match=r"hf-hub:tester/checked: model\.safetensors"):
        dcls_zoo.create_model("hf-hub:tester/checked", pretrained=True)


# ------------------------------------------------------------------------------------------
# found by trying it: garbage files, edited configs, weight errors at the command line


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n" * 20, b"oops", bytes(range(256)) * 8])
def test_garbage_torch_files_are_named_not_tracebacks(tmp_path, capsys, content):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(content)
    with pytest.raises(WeightsFileError, match=r"garbage\.pth.*truncated or corrupted, or not a torch file"):
        load_checkpoint(garbage)
    assert main(["convert", str(garbage), "--arch", ARCH, "--out", str(tmp_path / "out")]) == 1
    assert "truncated or corrupted" in capsys.readouterr().err
    ckpt = tmp_path / "garbage.ckpt"
    ckpt.write_bytes(content)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "out")]) == 1
    assert "garbage.ckpt" in capsys.readouterr().err


def test_an_unreadable_download_is_removed_from_the_cache(file_server, caches):
    file_server.url_files["/files/broken.pth"] = b"not a torch file at all"
    with pytest.raises(WeightsReadError, match=r"the weights file from .*broken\.pth.*removed from the download cache"):
        dcls_zoo.create_model(ARCH, pretrained=True, pretrained_cfg_overlay={"url": file_server.url + "/files/broken.pth"})
    assert not (caches / "broken.pth").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["model_args"].update(pretrained_cfg_overlay={"url": "http://127.0.0.1:1/x.pth"}), "pretrained_cfg_overlay would load weights"),
        (lambda c: c.update(model_args="x"), "not a mapping"),
        (lambda c: c.update(num_classes=10**9), "num_classes is 1000000000"),
        (lambda c: c.update(architecture="os.system"), "unknown architecture 'os.system'"),
        (lambda c: c.update(dcls_zoo="x"), "records no weight files"),
        (lambda c: c["dcls_zoo"].update(files={}), "records no weight files"),
    ],
)
def test_an_edited_export_config_is_refused(tmp_path, edit, message):
    export = tmp_path / "export"
    dcls_zoo.save_pretrained(dcls_zoo.create_model(ARCH, num_classes=3), export)
    config = json.loads((export / "config.json").read_text())
    config.setdefault("model_args", {})
    edit(config)
    (export / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsFileError, match=message):
        dcls_zoo.create_model(f"local-dir:{export}", pretrained=True)


def test_a_tag_without_weights_is_named():
    with pytest.raises(PretrainedWeightsError, match="No pretrained weights exist for convnext_dcls_atto.in1k; weights exist for: .*convnext_dcls_tiny.in1k"):
        dcls_zoo.create_model(ARCH, pretrained="in1k")


def test_weight_errors_at_the_command_line_are_one_line(silent_hub, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(network.TIMEOUT_ENV, "1")
    monkeypatch.chdir(tmp_path)
    for source, expected in (("hf-hub:tester/silent", "could not reach the Hugging Face Hub"),
                             ("in1k", "No pretrained weights exist for convnext_dcls_atto.in1k")):
        with pytest.raises(SystemExit) as info:
            main(["fit", "-c", QUICKSTART, f"--model.pretrained={source}", *QUICK_FIT])
        assert info.value.code == 2
        error = capsys.readouterr().err
        assert expected in error and "Traceback" not in error


def test_the_quick_mapped_check_refuses_a_truncated_checkpoint_and_reads_old_format_ones(tmp_path):
    checkpoint = {"state_dict": {"model.w": torch.arange(1000.0)}, "epoch": 3}
    whole, old = tmp_path / "whole.ckpt", tmp_path / "old.ckpt"
    torch.save(checkpoint, whole)
    torch.save(checkpoint, old, _use_new_zipfile_serialization=False)  # torch's pre-1.6 format: no zip to map
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size - 100])
    with pytest.raises(WeightsFileError, match=r"cut\.ckpt.*truncated or corrupted"):
        load_checkpoint(cut, mmap=True)
    for path in (whole, old):
        torch.testing.assert_close(load_checkpoint(path, mmap=True)["state_dict"]["model.w"], torch.arange(1000.0))
