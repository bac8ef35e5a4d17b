"""Converting the authors' ConvNeXt-dcls checkpoints (``dcls_zoo.weights.official`` and ``dcls-zoo convert``).

The authors' model is rebuilt here in their layout (facebook ConvNeXt names, ``Block.dwconv`` an
official ``dcls`` 0.1.1 ``Dcls2d``, one ``P`` (and ``SIG``) Parameter per stage assigned to every
block, so ``state_dict()`` repeats it per block), randomised, saved with ``torch.save`` as the
Zenodo files are, converted, loaded strictly into our ``convnext_dcls_tiny`` /
``convnext_dcls_gauss_tiny`` and compared on logits. The official package is the oracle for the
layer: its ``v0`` is H-first (our order) and its ``gauss`` W-first, so the Gaussian test only
passes if the converter flips the axis dim, and the wrong-order tests prove the flip matters.

Sizes: the logit tests use the registered archs (windows, counts, interpolation: what the axis
order is keyed on) at reduced depths and widths (passed through ``create_model``; the key layout
is the real files'), 10 classes and 64x64 inputs, because the official Gaussian layer takes
7-30 s per ConvNeXt-T forward on 2 CPU cores. The command tests use full ConvNeXt-T files.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from helpers import official_dcls_modules
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import dcls_zoo
from dcls_zoo.errors import CheckpointMismatchError
from dcls_zoo.state_dicts import load_state_dict_strict as load_checkpoint_strict
from dcls_zoo.weights.official import convert_official_checkpoint, is_converted, official_checkpoint_filter
from lightning_modules.commands.main import main

# the oracle, or None: the tests that build the authors' model ask for it through _quiet, the
# `official_dcls` fixture skipping them alone where it is not installed
DCLS_modules = official_dcls_modules()

TINY = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
SMALLER = dict(depths=(2, 2, 3, 2), dims=(16, 32, 48, 64))
NUM_CLASSES = 10
# (our arch, official version, window, kernel_count)
BILINEAR = ("convnext_dcls_tiny", "v0", 17, 34)
GAUSS = ("convnext_dcls_gauss_tiny", "gauss", 23, 26)
RTOL = 1e-4


# ------------------------------------------------------------------------------------------
# the authors' model, in their layout (written for this test from the notes, section 2.1)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over dim 1 of ``(N, C, H, W)`` (facebook ConvNeXt's ``data_format="channels_first"``)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class AuthorsBlock(nn.Module):
    """dwconv (official Dcls2d) -> LayerNorm (channels last) -> Linear 4x -> GELU -> Linear -> gamma."""

    def __init__(self, dim: int, window: int, count: int, version: str, P: nn.Parameter, SIG: nn.Parameter | None):
        super().__init__()
        self.dwconv = DCLS_modules.Dcls2d(
            dim, dim, kernel_count=count, dilated_kernel_size=window, padding=window // 2, groups=dim, version=version
        )
        # Exactly as the authors: the stage's Parameter replaces the layer's own.
        self.dwconv.P = P
        if SIG is not None:
            self.dwconv.SIG = SIG
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class AuthorsConvNeXtDcls(nn.Module):
    """ConvNeXt-dcls with facebook key names and per-stage positions shared by assignment."""

    def __init__(
        self, window: int, count: int, version: str, depths: tuple[int, ...], dims: tuple[int, ...], num_classes: int
    ) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), ChannelsFirstLayerNorm(dims[0]))]
            + [
                nn.Sequential(ChannelsFirstLayerNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
                for i in range(1, 4)
            ]
        )
        self.stages = nn.ModuleList()
        for depth, dim in zip(depths, dims):
            P = nn.Parameter(torch.zeros(2, dim, 1, count))
            SIG = nn.Parameter(torch.zeros(2, dim, 1, count)) if version == "gauss" else None
            self.stages.append(nn.Sequential(*(AuthorsBlock(dim, window, count, version, P, SIG) for _ in range(depth))))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return self.head(self.norm(x.mean((-2, -1))))


@torch.no_grad()
def _randomise(model: nn.Module, window: int, generator: torch.Generator) -> None:
    """Random weights with every part mattering: gamma ~ U(0.5, 1.5) (not 1e-6), random norms,
    non-integer positions spread over the whole window, widths away from the initial 0.23."""
    half = window // 2
    for name, param in model.named_parameters():  # shared P/SIG come once, under their first block
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "P":
            param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * (half - 0.01))
        elif leaf == "SIG":
            param.copy_(torch.rand(param.shape, generator=generator) * 1.5 + 0.1)
        elif leaf == "gamma":
            param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
        elif param.dim() == 1:
            base = 1.0 if leaf == "weight" else 0.0  # norm weights around 1, biases around 0
            param.copy_(base + 0.1 * torch.randn(param.shape, generator=generator))
        else:
            fan_in = param[0].numel()
            param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)


class _Official:
    """An authors' model, its saved checkpoint and its logits on a fixed input."""

    def __init__(self, spec: tuple[str, str, int, int], directory, seed: int, size: dict = SMALLER, run: bool = True):
        self.arch, version, window, count = spec
        self.size = size
        generator = torch.Generator().manual_seed(seed)
        model = AuthorsConvNeXtDcls(window, count, version, num_classes=NUM_CLASSES, **size).eval()
        _randomise(model, window, generator)
        self.input = torch.randn(2, 3, 64, 64, generator=generator)
        if run:
            with torch.no_grad():
                self.logits = model(self.input)
        self.state = model.state_dict()
        self.path = directory / f"{self.arch}_1k_224_ema.pth"
        torch.save({"model": self.state}, self.path)


@pytest.fixture(scope="module")
def _quiet(official_dcls):
    """The official package (a test that builds the authors' model needs it; skipped without it),
    whose Dcls2d logs several root-logger warnings per layer (no CUDA, no implicit GEMM)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    yield
    logging.disable(previous)


@pytest.fixture(scope="module")
def bilinear(_quiet, tmp_path_factory) -> _Official:
    return _Official(BILINEAR, tmp_path_factory.mktemp("bilinear"), seed=1)


@pytest.fixture(scope="module")
def gauss(_quiet, tmp_path_factory) -> _Official:
    return _Official(GAUSS, tmp_path_factory.mktemp("gauss"), seed=2)


@pytest.fixture(scope="module")
def gauss_tiny_file(_quiet, tmp_path_factory) -> _Official:
    """A full-size ConvNeXt-T Gaussian file (the Zenodo layout and sizes), not run."""
    return _Official(GAUSS, tmp_path_factory.mktemp("gauss_tiny"), seed=3, size=TINY, run=False)


def _ours(arch: str, size: dict = SMALLER) -> nn.Module:
    return dcls_zoo.create_model(arch, num_classes=NUM_CLASSES, **size).eval()


def _logits(arch: str, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model = _ours(arch)
    load_checkpoint_strict(model, state)
    with torch.no_grad():
        return model(x)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------------------------------------
# the authors' files load and give the authors' logits


def test_checkpoint_repeats_shared_positions_per_block(bilinear, gauss):
    # The premise of the collapse: the authors' state dict lists the stage's P under every block.
    assert torch.equal(bilinear.state["stages.2.0.dwconv.P"], bilinear.state["stages.2.2.dwconv.P"])
    assert sum(key.endswith("dwconv.P") for key in bilinear.state) == sum(SMALLER["depths"])
    assert sum(key.endswith("dwconv.SIG") for key in gauss.state) == sum(SMALLER["depths"])


@pytest.mark.parametrize("which", ["bilinear", "gauss"])
def test_official_checkpoint_gives_official_logits(which, request):
    official: _Official = request.getfixturevalue(which)
    state = convert_official_checkpoint(official.path, official.arch)
    assert sum(key.endswith(".P") for key in state) == 4  # one per stage
    count = official.state["stages.3.0.dwconv.P"].shape[-1]
    assert tuple(state["stages.3.dcls_shared.conv_dw.P"].shape) == (2, SMALLER["dims"][3], 1, count)
    logits = _logits(official.arch, state, official.input)
    assert _relative_error(logits, official.logits) < RTOL


@pytest.mark.parametrize("which, wrong", [("bilinear", "wh"), ("gauss", "hw")])
def test_wrong_axis_order_changes_the_logits(which, wrong, request):
    # Proves the table's order matters: the transposed kernels load without error but compute
    # something else (gauss: the flip is needed; bilinear v0: it must not happen).
    official: _Official = request.getfixturevalue(which)
    state = convert_official_checkpoint(official.path, official.arch, source_axis_order=wrong)
    logits = _logits(official.arch, state, official.input)
    assert _relative_error(logits, official.logits) > 1e-2


def test_gauss_positions_and_widths_are_flipped(gauss):
    state = convert_official_checkpoint({"model": gauss.state}, gauss.arch)
    for name in ("P", "SIG"):
        official = gauss.state[f"stages.1.0.dwconv.{name}"]
        assert torch.equal(state[f"stages.1.dcls_shared.conv_dw.{name}"], official.flip(0))
    # The source tensors are untouched (flip copies).
    assert not torch.equal(gauss.state["stages.1.0.dwconv.P"], state["stages.1.dcls_shared.conv_dw.P"])


def test_model_ema_is_preferred_and_key_selects(bilinear, tmp_path):
    noisy = {k: v + 1.0 if v.is_floating_point() else v for k, v in bilinear.state.items()}
    path = tmp_path / "both.pth"
    torch.save({"model": noisy, "model_ema": bilinear.state, "epoch": 299}, path)
    ema = convert_official_checkpoint(path, bilinear.arch)
    assert torch.equal(ema["head.fc.weight"], bilinear.state["head.weight"])
    plain = convert_official_checkpoint(path, bilinear.arch, key="model")
    assert torch.equal(plain["head.fc.weight"], noisy["head.weight"])
    with pytest.raises(ValueError, match="no key 'ema'.*model_ema"):
        convert_official_checkpoint(path, bilinear.arch, key="ema")


def test_conversion_is_idempotent_and_accepts_bare_state_dicts(bilinear):
    once = convert_official_checkpoint(bilinear.state, bilinear.arch)  # bare state dict
    assert is_converted(once) and not is_converted(bilinear.state)
    twice = convert_official_checkpoint(once, bilinear.arch)
    assert twice.keys() == once.keys() and all(twice[k] is once[k] for k in once)


def test_timm_filter_converts_once(gauss):
    model = _ours(gauss.arch)
    state = official_checkpoint_filter({"model": gauss.state}, model)
    assert official_checkpoint_filter(state, model) == state  # idempotent, no second flip
    assert torch.equal(state["stages.0.dcls_shared.conv_dw.SIG"], gauss.state["stages.0.0.dwconv.SIG"].flip(0))
    load_checkpoint_strict(model, state)


@pytest.mark.slow
def test_pretrained_true_converts_on_the_fly(gauss):
    # timm's pretrained path with the authors' file: the arch's pretrained_filter_fn converts it.
    model = dcls_zoo.create_model(
        gauss.arch,
        pretrained=True,
        num_classes=NUM_CLASSES,
        pretrained_cfg_overlay=dict(file=str(gauss.path), num_classes=NUM_CLASSES),
        **SMALLER,
    ).eval()
    with torch.no_grad():
        assert _relative_error(model(gauss.input), gauss.logits) < RTOL


def test_filter_reshapes_linear_mlp_for_conv_mlp_archs(_quiet):
    # Our compact archs use timm's conv_mlp (1x1 convs, weights (out, in, 1, 1)); a file written
    # with the authors' Linear MLP still loads, and computes the same thing.
    ours = dcls_zoo.create_model("convnext_dcls_atto", num_classes=NUM_CLASSES, depths=(1, 1, 2, 1)).eval()
    count = ours.stages[0].blocks[0].conv_dw.weight.shape[-1]
    official = AuthorsConvNeXtDcls(17, count, "v0", depths=(1, 1, 2, 1), dims=(40, 80, 160, 320), num_classes=NUM_CLASSES)
    _randomise(official.eval(), 17, torch.Generator().manual_seed(4))
    with pytest.warns(UserWarning, match="'convnext_dcls_atto'.*'v0'"):
        state = official_checkpoint_filter({"model": official.state_dict()}, ours)
    assert state["stages.0.blocks.0.mlp.fc1.weight"].shape == (160, 40, 1, 1)
    load_checkpoint_strict(ours, state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert _relative_error(ours(x), official(x)) < RTOL


# ------------------------------------------------------------------------------------------
# checkpoints that do not fit get errors that name the problem


def test_mismatch_names_missing_unexpected_and_shapes(bilinear):
    state = convert_official_checkpoint(bilinear.state, bilinear.arch)
    del state["stages.2.blocks.1.mlp.fc1.weight"]
    state["stages.9.extra"] = torch.zeros(1)
    state["head.fc.weight"] = torch.zeros(5, 64)
    model = _ours(bilinear.arch)
    before = model.head.fc.weight.clone()
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint_strict(model, state)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "missing keys (1): stages.2.blocks.1.mlp.fc1.weight" in message
    assert "unexpected keys (1): stages.9.extra" in message
    assert "head.fc.weight (checkpoint [5, 64], model [10, 64])" in message
    assert torch.equal(model.head.fc.weight, before)  # nothing was loaded


def test_wrong_architecture_is_named(bilinear):
    # A tiny bilinear file into the Gaussian arch: other windows' counts, and no SIG.
    state = convert_official_checkpoint(bilinear.state, GAUSS[0], source_axis_order="hw")
    with pytest.raises(ValueError, match=r"missing keys \(4\): stages\.0\.dcls_shared\.conv_dw\.SIG.*shape mismatches"):
        load_checkpoint_strict(_ours(GAUSS[0]), state)


def test_disagreeing_position_copies_name_the_stage(gauss):
    state = dict(gauss.state)
    state["stages.2.2.dwconv.SIG"] = state["stages.2.2.dwconv.SIG"] + 0.01
    with pytest.raises(ValueError, match=r"stage 'stages\.2'.*stages\.2\.blocks\.0\.conv_dw\.SIG vs stages\.2\.blocks\.2\.conv_dw\.SIG"):
        convert_official_checkpoint(state, gauss.arch)


def test_bad_axis_order_is_rejected(bilinear):
    with pytest.raises(ValueError, match="source_axis_order must be 'hw'.*got 'xy'"):
        convert_official_checkpoint(bilinear.state, bilinear.arch, source_axis_order="xy")


def _detonate() -> "Payload":
    Payload.built += 1
    return Payload()


class Payload:
    """A custom object in a checkpoint: unpickling it runs a function chosen by the file's author."""

    built = 0

    def __reduce__(self):
        return (_detonate, ())


def test_pickled_custom_class_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}, "extra": Payload()}, path)
    torch.load(path, weights_only=False)  # what an unsafe loader would do: the function runs
    assert Payload.built == 1
    with pytest.raises(ValueError, match=r"refusing to load .*weights_only=True \(.*_detonate"):
        convert_official_checkpoint(path, BILINEAR[0])
    assert Payload.built == 1


def test_unknown_arch_guesses_the_order_with_a_warning(gauss, bilinear):
    with pytest.warns(UserWarning, match="no official checkpoint is registered for arch 'my_gauss_net'.*'wh'"):
        state = convert_official_checkpoint(gauss.state, "my_gauss_net")
    assert torch.equal(state["stages.0.dcls_shared.conv_dw.P"], gauss.state["stages.0.0.dwconv.P"].flip(0))
    with pytest.warns(UserWarning, match="'v0' \\('hw' axis order\\)"):
        state = convert_official_checkpoint(bilinear.state, "my_bilinear_net")
    assert torch.equal(state["stages.0.dcls_shared.conv_dw.P"], bilinear.state["stages.0.0.dwconv.P"])


def test_training_args_namespace_is_allowed(tmp_path, bilinear):
    # facebook ConvNeXt's save_model stores argparse args next to the weights.
    import argparse

    path = tmp_path / "checkpoint-best.pth"
    torch.save({"model": bilinear.state, "args": argparse.Namespace(model="convnext_dcls_tiny", lr=4e-3)}, path)
    assert "head.fc.weight" in convert_official_checkpoint(path, bilinear.arch)


# ------------------------------------------------------------------------------------------
# the command


@pytest.mark.slow
def test_convert_command_writes_a_strictly_loading_safetensors(gauss_tiny_file, tmp_path, capsys):
    official = gauss_tiny_file
    assert main(["convert", str(official.path), "--arch", official.arch, "--out", str(tmp_path / "out.safetensors")]) == 0
    output = capsys.readouterr().out
    written = tmp_path / "out.safetensors"
    assert str(written) in output and "'wh'" in output and "loads strictly into convnext_dcls_gauss_tiny" in output
    state = load_file(written)
    model = dcls_zoo.create_model(official.arch, num_classes=NUM_CLASSES)
    load_checkpoint_strict(model, state)  # the real ConvNeXt-T-dcls Gaussian arch
    expected = convert_official_checkpoint(official.path, official.arch)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    with safe_open(written, framework="pt") as handle:
        metadata = handle.metadata()
    record = json.loads(metadata["dcls_zoo"])["provenance"]  # the one provenance schema of every file we write
    assert record["architecture"] == official.arch and record["source"]["axis_order"] == "wh"
    assert record["source"]["file"] == official.path.name


def test_convert_command_into_a_directory_writes_a_loadable_hub_export(gauss_tiny_file, tmp_path, capsys):
    official = gauss_tiny_file
    export = tmp_path / "export"
    assert main(["convert", str(official.path), "--arch", official.arch, "--out", str(export)]) == 0
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in export.iterdir()}
    assert "wrote the export" in capsys.readouterr().out
    loaded = dcls_zoo.create_model(f"local-dir:{export}", pretrained=True)
    expected = convert_official_checkpoint(official.path, official.arch)
    state = loaded.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_convert_command_reports_a_bad_file(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"extra": Payload()}, path)
    assert main(["convert", str(path), "--arch", BILINEAR[0], "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "refusing to load" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
def test_convert_command_rejects_a_checkpoint_of_another_arch(gauss_tiny_file, tmp_path, capsys):
    # The Gaussian 23/26 file against the bilinear 17/34 arch: no SIG there, other counts.
    out = tmp_path / "x.safetensors"
    arguments = ["convert", str(gauss_tiny_file.path), "--arch", "convnext_dcls_tiny", "--out", str(out)]
    assert main(arguments + ["--source-axis-order", "hw"]) == 1
    error = capsys.readouterr().err
    assert "unexpected keys (4): stages.0.dcls_shared.conv_dw.SIG" in error
    assert "stages.0.blocks.0.conv_dw.weight (checkpoint [96, 1, 26], model [96, 1, 34])" in error
    assert not out.exists()


def test_convert_command_rejects_an_unknown_arch(bilinear, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["convert", str(bilinear.path), "--arch", "convnext_dcls_tni", "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "unknown arch 'convnext_dcls_tni'" in error and "convnext_dcls_tiny" in error
    assert not out.exists()
