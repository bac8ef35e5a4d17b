"""``pretrained=True``: the Hub repo first, the authors' file as fallback, checksums, offline (dcls_zoo.weights.pretrained).

Nothing here leaves the machine: a guard refuses every non-loopback connection and name lookup,
the Hugging Face endpoint points at the loopback server of ``helpers.py`` (a few Hub repos and
the authors' files, as ``DCLS_ZOO_ZENODO_URL`` mirror), and the caches are temporary.

The weights are our registered archs at reduced depth and width (the arch fixes the layout and
the authors' axis order), with random positions, sigmas and layer scales so that every part
changes the logits. The authors'-format file is built from our state dict by the inverse of the
converter's mapping (facebook names, the stage's shared positions repeated per block, the
Gaussian file's positions W-first), and saved as they did: ``torch.save({"model": sd})``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import ROOT, point_hub_client_at
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

import dcls_zoo
from dcls_zoo.errors import ChecksumMismatchError, PretrainedWeightsError
from dcls_zoo.state_dicts import sha256_file
from dcls_zoo.weights import table
from dcls_zoo.weights.pretrained import ZENODO_URL_ENV, fetch_pretrained, load_pretrained_state_dict
from dcls_zoo.weights.table import PRETRAINED_WEIGHTS, PretrainedWeights, get_pretrained_weights

SMALL = dict(depths=(2, 1, 1, 2), dims=(16, 32, 48, 64))
TINY, GAUSS = "convnext_dcls_tiny", "convnext_dcls_gauss_tiny"
COMMIT_MAIN = "a" * 40
COMMIT_PINNED = "b" * 40


# ------------------------------------------------------------------------------------------
# no network: only loopback connections and names


def _loopback(host: object) -> bool:
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Refuse any connection or DNS lookup that is not loopback (the tests must never reach out)."""
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            raise ConnectionRefusedError(f"test network guard: no connection to {address!r}")

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"test network guard: no lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# ------------------------------------------------------------------------------------------
# the loopback server (helpers.FakeHub): a few Hub repos, and the authors' files under MIRROR

MIRROR = "/zenodo/"


@pytest.fixture
def server(loopback_server):
    """This file's server: Hub repos added with ``put``, the authors' files at ``MIRROR + name``."""
    return loopback_server


@pytest.fixture
def caches(tmp_path, monkeypatch, server):
    """Temporary HF and torch caches, the Hub endpoint on the loopback server, its MIRROR as mirror."""
    hf_home, torch_dir = tmp_path / "hf_home", tmp_path / "torch"
    point_hub_client_at(monkeypatch, server.url, hf_home)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(torch_dir))
    monkeypatch.setenv(ZENODO_URL_ENV, server.url + MIRROR)
    return dict(hf=hf_home / "hub", downloads=torch_dir / "checkpoints")


# ------------------------------------------------------------------------------------------
# weights: our reduced models, and the same weights in the authors' layout


def source_model(arch: str, seed: int) -> torch.nn.Module:
    """A reduced registered model whose every parameter matters (random positions, sigmas, scales)."""
    torch.manual_seed(seed)
    model = dcls_zoo.create_model(arch, **SMALL).eval()
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "P":
                window = 23 if "gauss" in arch else 17
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * (window // 2 - 0.5))
            elif leaf == "SIG":
                param.copy_(torch.rand(param.shape, generator=generator) * 1.5 + 0.1)
            elif leaf == "gamma":
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
    return model


INPUT = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(INPUT)


# timm names -> facebook ConvNeXt names (the converter's mapping, inverted for this test)
_TO_FACEBOOK = (
    (r"^stem\.", "downsample_layers.0."),
    (r"^stages\.(\d+)\.downsample\.(\d+)\.", r"downsample_layers.\1.\2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"\.conv_dw\.", ".dwconv."),
    (r"\.mlp\.fc(\d)\.", r".pwconv\1."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.", "head."),
)


def authors_layout(state: dict[str, torch.Tensor], gauss: bool) -> dict[str, torch.Tensor]:
    """Our state dict as the authors saved theirs: facebook names, the stage's P (and SIG) under
    every block, W-first for the Gaussian file."""
    shared = {}
    out = {}
    for key, value in state.items():
        match = re.fullmatch(r"stages\.(\d+)\.dcls_shared\.conv_dw\.(P|SIG)", key)
        if match:
            shared[(int(match[1]), match[2])] = value.flip(0) if gauss else value
            continue
        for pattern, replacement in _TO_FACEBOOK:
            key = re.sub(pattern, replacement, key)
        out[key] = value.clone()
    for (stage, name), value in shared.items():
        for block in range(SMALL["depths"][stage]):
            out[f"stages.{stage}.{block}.dwconv.{name}"] = value.clone()
    return out


def torch_bytes(obj: object, tmp_path: Path, name: str = "ckpt.pth") -> bytes:
    path = tmp_path / name
    torch.save(obj, path)
    return path.read_bytes()


def safetensors_bytes(model: torch.nn.Module, tmp_path: Path, name: str = "model.safetensors") -> bytes:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path.read_bytes()


def zenodo_name(arch: str) -> str:
    return os.path.basename(PRETRAINED_WEIGHTS[f"{arch}.in1k"].fallback_url)


def serve_authors_file(server, arch: str, model: torch.nn.Module, tmp_path: Path) -> bytes:
    body = torch_bytes({"model": authors_layout(model.state_dict(), "gauss" in arch)}, tmp_path)
    server.url_files[MIRROR + zenodo_name(arch)] = body
    return body


def set_row(monkeypatch, key: str, **changes) -> None:
    monkeypatch.setitem(PRETRAINED_WEIGHTS, key, replace(PRETRAINED_WEIGHTS[key], **changes))


# ------------------------------------------------------------------------------------------
# the table


def test_table_rows_are_registered_and_consistent():
    table.check_table()
    import timm

    for key, row in PRETRAINED_WEIGHTS.items():
        assert row.hf_hub_id == f"dcls-zoo/{key}" and row.filename == "model.safetensors"
        assert row.sha256 is None and not row.published  # planned repos, not published yet
        assert timm.models.get_pretrained_cfg(key).url == row.fallback_url  # timm's cfg, from the table
        assert row.fallback_url.startswith("https://zenodo.org/record/")
    # every zoo model whose timm cfg has weights has a row
    assert set(dcls_zoo.list_models(pretrained=True)) == set(PRETRAINED_WEIGHTS)
    assert get_pretrained_weights(TINY) == ("convnext_dcls_tiny.in1k", PRETRAINED_WEIGHTS["convnext_dcls_tiny.in1k"])


def test_row_validation():
    with pytest.raises(ValueError, match="org/name"):
        PretrainedWeights("no-slash")
    with pytest.raises(ValueError, match="safetensors only"):
        PretrainedWeights("org/name", filename="model.pth")
    with pytest.raises(ValueError, match="sha256 must be 64"):
        PretrainedWeights("org/name", sha256="abc")
    with pytest.raises(ValueError, match="revision"):
        table.hub_id_at_revision(TINY, "")


def test_unknown_architecture_is_named(server, caches):
    with pytest.raises(ValueError, match=r"unknown architecture 'convnext_dcls_tinny'.*did you mean convnext_dcls_tiny"):
        get_pretrained_weights("convnext_dcls_tinny.in1k")
    with pytest.raises(ValueError, match="unknown architecture 'convnext_dcls_huge' in the pretrained config"):
        dcls_zoo.create_model(TINY, pretrained=True, pretrained_cfg=dict(architecture="convnext_dcls_huge", tag="in1k"))
    with pytest.raises(ValueError, match="unknown architecture 'not_a_model'.*pretrained weights table"):
        table.check_table({"not_a_model.in1k": PRETRAINED_WEIGHTS["convnext_dcls_tiny.in1k"]})
    assert server.requests == []


def test_models_without_weights_raise_before_any_request(server, caches):
    with pytest.raises(PretrainedWeightsError, match=r"No pretrained weights exist for convnext_dcls_atto; weights exist for: convnext_dcls_base.in1k"):
        dcls_zoo.create_model("convnext_dcls_atto", pretrained=True)
    with pytest.raises(RuntimeError, match="No pretrained weights exist for resnet50_dcls.a3_in1k"):
        dcls_zoo.create_model("resnet50_dcls", pretrained=True)
    with pytest.raises(PretrainedWeightsError, match="No pretrained weights exist for convnext_tiny_k17"):
        fetch_pretrained("convnext_tiny_k17")
    with pytest.raises(PretrainedWeightsError, match=r"No pretrained weights exist for convnext_dcls_tiny.in22k; weights exist for: .*convnext_dcls_tiny.in1k"):
        dcls_zoo.create_model(TINY, pretrained="in22k")
    with pytest.raises(ValueError, match="pass pretrained=True"):
        dcls_zoo.create_model(TINY, revision="main")
    assert server.requests == []


# ------------------------------------------------------------------------------------------
# the fallback: the authors' files, converted on the fly


@pytest.mark.parametrize("arch", [TINY, GAUSS])
def test_fallback_loads_the_authors_file(arch, server, caches, tmp_path):
    source = source_model(arch, seed=1)
    serve_authors_file(server, arch, source, tmp_path)
    model = dcls_zoo.create_model(arch, pretrained=True, **SMALL)  # the Hub repo does not exist: 404
    torch.testing.assert_close(logits(model), logits(source))
    assert [m for m, _ in server.hits("/resolve/")] == ["HEAD"]
    assert server.hits("/zenodo/") == [("GET", f"/zenodo/{zenodo_name(arch)}")]
    cached = caches["downloads"] / zenodo_name(arch)
    assert cached.is_file() and list(caches["downloads"].iterdir()) == [cached]  # no partial files left
    assert model.pretrained_cfg["url"] == f"{server.url}/zenodo/{zenodo_name(arch)}"
    assert "state_dict" not in model.pretrained_cfg and model.default_cfg is model.pretrained_cfg
    # second time: from the download cache (the Hub is asked again: it wins once it exists)
    again = dcls_zoo.create_model(arch, pretrained=True, **SMALL)
    torch.testing.assert_close(logits(again), logits(source))
    assert len(server.hits("/zenodo/")) == 1 and len(server.hits("/resolve/")) == 2


def test_fallback_keeps_timm_adaptation(server, caches, tmp_path):
    source = source_model(TINY, seed=2)
    serve_authors_file(server, TINY, source, tmp_path)
    model = dcls_zoo.create_model(TINY, pretrained=True, num_classes=7, **SMALL)  # new head
    assert model.head.fc.out_features == 7
    torch.testing.assert_close(model.stem[0].weight, source.stem[0].weight)
    torch.testing.assert_close(model.stages[3].dcls_shared.conv_dw.P, source.stages[3].dcls_shared.conv_dw.P)
    features = dcls_zoo.create_model(TINY, pretrained=True, features_only=True, **SMALL)
    with torch.no_grad():
        assert [f.shape[1] for f in features(INPUT)] == list(SMALL["dims"])
    assert "state_dict" not in features.pretrained_cfg


def test_fallback_checksum_is_enforced(server, caches, tmp_path, monkeypatch):
    source = source_model(TINY, seed=3)
    body = serve_authors_file(server, TINY, source, tmp_path)
    key = "convnext_dcls_tiny.in1k"
    set_row(monkeypatch, key, fallback_sha256=hashlib.sha256(body).hexdigest())
    torch.testing.assert_close(logits(dcls_zoo.create_model(TINY, pretrained=True, **SMALL)), logits(source))
    set_row(monkeypatch, key, fallback_sha256="0" * 64)  # the cached file is checked on every load
    with pytest.raises(ChecksumMismatchError, match=r"sha256 mismatch .*convnext_dcls_tiny_1k_224_ema\.pth.* names 0{64}"):
        dcls_zoo.create_model(TINY, pretrained=True, **SMALL)
    # a tampered cached file
    set_row(monkeypatch, key, fallback_sha256=hashlib.sha256(body).hexdigest())
    cached = caches["downloads"] / zenodo_name(TINY)
    cached.write_bytes(body[:-1] + bytes([body[-1] ^ 1]))
    with pytest.raises(ChecksumMismatchError, match="not loaded"):
        dcls_zoo.create_model(TINY, pretrained=True, **SMALL)


def test_truncated_download_and_truncated_file(server, caches, tmp_path):
    source = source_model(TINY, seed=4)
    body = serve_authors_file(server, TINY, source, tmp_path)
    server.truncate.add(MIRROR + zenodo_name(TINY))  # announced length, half the bytes, connection closed
    with pytest.raises(PretrainedWeightsError, match="truncated download; nothing was cached"):
        dcls_zoo.create_model(TINY, pretrained=True, **SMALL)
    assert not caches["downloads"].exists() or list(caches["downloads"].iterdir()) == []
    server.truncate.clear()
    server.url_files[MIRROR + zenodo_name(TINY)] = body[: len(body) // 2]  # a complete download of a truncated file
    with pytest.raises(PretrainedWeightsError, match="truncated or corrupted.*removed from the download cache"):
        dcls_zoo.create_model(TINY, pretrained=True, **SMALL)
    assert list(caches["downloads"].iterdir()) == []  # the next load downloads it again
    server.url_files[MIRROR + zenodo_name(TINY)] = body
    torch.testing.assert_close(logits(dcls_zoo.create_model(TINY, pretrained=True, **SMALL)), logits(source))


_UNPICKLED = []


def _record_unpickling() -> str:
    _UNPICKLED.append(True)
    return "ran"


class Payload:
    """An object that runs code when unpickled (the thing a weights file must never do)."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_pickle_with_a_custom_class_is_refused(server, caches, tmp_path):
    source = source_model(TINY, seed=5)
    state = authors_layout(source.state_dict(), gauss=False)
    server.url_files[MIRROR + zenodo_name(TINY)] = torch_bytes({"model": state, "extra": Payload()}, tmp_path)
    with pytest.raises(ValueError, match="refusing to load .*weights_only=True"):
        dcls_zoo.create_model(TINY, pretrained=True, **SMALL)
    assert _UNPICKLED == []


def test_explicit_url_and_function_arguments(server, caches, tmp_path):
    source = source_model(GAUSS, seed=6)
    state = authors_layout(source.state_dict(), gauss=True)
    server.url_files[MIRROR + "elsewhere.pth"] = torch_bytes({"model_ema": state, "model": {}}, tmp_path)
    server.url_files[MIRROR + "ours.safetensors"] = safetensors_bytes(source, tmp_path)
    url = f"{server.url}/zenodo/elsewhere.pth"
    # an overlay URL is the only source: the Hub is not asked
    model = dcls_zoo.create_model(GAUSS, pretrained=True, pretrained_cfg_overlay=dict(url=url), **SMALL)
    torch.testing.assert_close(logits(model), logits(source))
    assert server.hits("/resolve/") == []
    # the function API: converted state dicts, from a torch file or a safetensors URL
    converted = load_pretrained_state_dict(GAUSS, url=url, progress=False)
    assert converted.keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(converted[key], value)
    weights = fetch_pretrained(GAUSS, url=f"{server.url}/zenodo/ours.safetensors")
    assert weights.format == "safetensors" and weights.url.endswith("ours.safetensors")
    with pytest.raises(PretrainedWeightsError, match="HTTP 404"):
        fetch_pretrained(GAUSS, url=f"{server.url}/zenodo/missing.pth")


# ------------------------------------------------------------------------------------------
# the Hub


def test_hub_wins_when_it_exists(server, caches, tmp_path, monkeypatch):
    hub_model, zenodo_model = source_model(TINY, seed=7), source_model(TINY, seed=8)
    repo = PRETRAINED_WEIGHTS["convnext_dcls_tiny.in1k"].hf_hub_id
    body = safetensors_bytes(hub_model, tmp_path)
    server.put(repo, {"model.safetensors": body}, commit=COMMIT_MAIN)
    serve_authors_file(server, TINY, zenodo_model, tmp_path)
    model = dcls_zoo.create_model(TINY, pretrained=True, **SMALL)
    torch.testing.assert_close(logits(model), logits(hub_model))
    assert server.hits("/zenodo/") == []
    assert model.pretrained_cfg["hf_hub_id"] == repo
    cached = caches["hf"] / "models--dcls-zoo--convnext_dcls_tiny.in1k" / "snapshots" / COMMIT_MAIN / "model.safetensors"
    assert cached.is_file()
    # a published checksum is enforced, on a cached file too
    set_row(monkeypatch, "convnext_dcls_tiny.in1k", sha256=hashlib.sha256(body).hexdigest())
    torch.testing.assert_close(logits(dcls_zoo.create_model(TINY, pretrained=True, **SMALL)), logits(hub_model))
    set_row(monkeypatch, "convnext_dcls_tiny.in1k", sha256="f" * 64)
    with pytest.raises(ChecksumMismatchError, match=f"sha256 mismatch for Hugging Face Hub {repo}@main/model.safetensors"):
        dcls_zoo.create_model(TINY, pretrained=True, **SMALL)
    assert server.hits("/zenodo/") == []


def test_hub_revision_pinning(server, caches, tmp_path):
    main, pinned = source_model(TINY, seed=9), source_model(TINY, seed=10)
    repo = PRETRAINED_WEIGHTS["convnext_dcls_tiny.in1k"].hf_hub_id
    server.put(repo, {"model.safetensors": safetensors_bytes(main, tmp_path, "main.safetensors")}, commit=COMMIT_MAIN)
    server.put(repo, {"model.safetensors": safetensors_bytes(pinned, tmp_path, "pinned.safetensors")}, branch=None,
               commit=COMMIT_PINNED)
    model = dcls_zoo.create_model(TINY, pretrained=True, revision=COMMIT_PINNED, **SMALL)
    torch.testing.assert_close(logits(model), logits(pinned))
    assert model.pretrained_cfg["hf_hub_id"] == f"{repo}@{COMMIT_PINNED}"
    # a revision that does not exist is an error, never a fallback
    serve_authors_file(server, TINY, main, tmp_path)
    with pytest.raises(PretrainedWeightsError, match=r"revision 'c{40}' does not exist"):
        dcls_zoo.create_model(TINY, pretrained=True, revision="c" * 40, **SMALL)
    assert server.hits("/zenodo/") == []


def test_offline_without_caches_is_a_clear_error(server, caches, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedWeightsError) as error:
        dcls_zoo.create_model(TINY, pretrained=True, **SMALL)
    message = str(error.value)
    for needed in ("HF_HUB_OFFLINE", "HF_ENDPOINT", str(caches["hf"]), str(caches["downloads"]),
                   f"{server.url}/zenodo/{zenodo_name(TINY)}", ZENODO_URL_ENV):
        assert needed in message
    assert server.requests == []


def test_unreachable_hub_is_a_clear_error(server, caches, tmp_path, monkeypatch):
    serve_authors_file(server, TINY, source_model(TINY, seed=11), tmp_path)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: connection refused
    point_hub_client_at(monkeypatch, dead, tmp_path / "hf_home")
    # huggingface_hub retries a refused connection 5 times with 1-8 s sleeps (23 s); skip the sleeps
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http, "time", SimpleNamespace(sleep=lambda seconds: None))
    try:
        with pytest.raises(PretrainedWeightsError, match=rf"(?s)could not reach the Hugging Face Hub at {dead}.*put the authors' file .* in the download cache"):
            dcls_zoo.create_model(TINY, pretrained=True, **SMALL)
    finally:
        closed.close()
    assert server.hits("/zenodo/") == []  # the Hub may exist: no fallback download


def test_offline_uses_a_cached_fallback(server, caches, tmp_path, monkeypatch):
    source = source_model(GAUSS, seed=12)
    serve_authors_file(server, GAUSS, source, tmp_path)
    dcls_zoo.create_model(GAUSS, pretrained=True, **SMALL)  # online: the Hub 404s, the fallback is cached
    count = len(server.requests)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    model = dcls_zoo.create_model(GAUSS, pretrained=True, **SMALL)
    torch.testing.assert_close(logits(model), logits(source))
    assert len(server.requests) == count


_OFFLINE_SCRIPT = r"""
import json, sys, torch
from dataclasses import replace
import dcls_zoo
from dcls_zoo.errors import ChecksumMismatchError, PretrainedWeightsError
from dcls_zoo.weights import table
from dcls_zoo.weights.table import PRETRAINED_WEIGHTS
from huggingface_hub import constants

small = dict(depths=(2, 1, 1, 2), dims=(16, 32, 48, 64))
x, expected = torch.load(sys.argv[1], weights_only=True)
key, out = "convnext_dcls_tiny.in1k", {"offline": constants.HF_HUB_OFFLINE}

def check(name, **kwargs):
    with torch.no_grad():
        y = dcls_zoo.create_model("convnext_dcls_tiny", pretrained=True, **small, **kwargs).eval()(x)
    out[name] = bool(torch.equal(y, expected[name]))

check("main")
check("pinned", revision=sys.argv[2])
row = PRETRAINED_WEIGHTS[key]
PRETRAINED_WEIGHTS[key] = replace(row, sha256=sys.argv[3])
check("main")
PRETRAINED_WEIGHTS[key] = replace(row, sha256="0" * 64)
try:
    check("main")
except ChecksumMismatchError as error:
    out["checksum_error"] = str(error)
PRETRAINED_WEIGHTS[key] = row
try:
    dcls_zoo.create_model("convnext_dcls_tiny", pretrained=True, revision="c" * 40, **small)
except PretrainedWeightsError as error:
    out["missing_revision"] = str(error)
print(json.dumps(out))
"""


def test_seeded_cache_in_offline_subprocess(tmp_path):
    """The Hub path end to end in a fresh process: HF_HUB_OFFLINE=1 read at import, a hand-seeded
    cache (``refs/main`` + two snapshots), revision pinning and the checksum, no server at all."""
    main, pinned = source_model(TINY, seed=13), source_model(TINY, seed=14)
    repo_dir = tmp_path / "hf" / "models--dcls-zoo--convnext_dcls_tiny.in1k"
    for commit, model in ((COMMIT_MAIN, main), (COMMIT_PINNED, pinned)):
        (repo_dir / "snapshots" / commit).mkdir(parents=True)
        safetensors_bytes(model, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT_MAIN)
    main_sha = sha256_file(repo_dir / "snapshots" / COMMIT_MAIN / "model.safetensors")
    torch.save((INPUT, {"main": logits(main), "pinned": logits(pinned)}), tmp_path / "expected.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(tmp_path / "hf"),
        HF_ENDPOINT="http://127.0.0.1:9",  # never contacted: offline
        TORCH_HOME=str(tmp_path / "torch"),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env[ZENODO_URL_ENV] = "http://127.0.0.1:9/"
    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, str(tmp_path / "expected.pt"), COMMIT_PINNED, main_sha],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["offline"] is True and out["main"] is True and out["pinned"] is True
    assert "sha256 mismatch" in out["checksum_error"] and main_sha in out["checksum_error"]
    assert "HF_HUB_OFFLINE" in out["missing_revision"] and "Hugging Face cache" in out["missing_revision"]
