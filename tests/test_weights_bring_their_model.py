"""``pretrained=...`` names the weights, and the weights bring their model: export directories,
``local-dir:``/``hf-hub:`` sources and Lightning checkpoints build the architecture and model
arguments they record; a contradicting architecture is refused; heads and stems are adapted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dcls_zoo
from lightning_modules.checkpoints import weights_source
from lightning_modules.module import ImageClassifier

SMALL = {"stem": "small", "stem_stride": 2, "dims": [8, 16, 24, 32], "dcls_kernel_size": [7, 5, 3, 3],
         "conv_mlp": False}


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A 1-channel, 10-class ConvNeXt-dcls with non-default arguments, exported."""
    torch.manual_seed(0)
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=10, in_chans=1, **SMALL).eval()
    return dcls_zoo.save_pretrained(model, tmp_path_factory.mktemp("weights") / "export")


def test_an_export_brings_its_architecture_and_arguments(export):
    source = weights_source(str(export))
    assert source.arch == "convnext_dcls_atto"
    assert {k: source.model_args[k] for k in SMALL} == SMALL and "num_classes" not in source.model_args
    # fine-tune on 5 RGB classes: nothing named but the data's counts
    module = ImageClassifier(pretrained=str(export), num_classes=5, in_chans=3, model_kwargs={"drop_path_rate": 0.1})
    assert module.hparams.arch == "convnext_dcls_atto" and module.hparams.model_kwargs["dims"] == [8, 16, 24, 32]
    assert module.hparams.model_kwargs["drop_path_rate"] == 0.1  # the user's arguments over the recorded ones
    assert module.model.stem[0].in_channels == 3 and module.model.head.fc.out_features == 5
    reference = dcls_zoo.create_model(f"local-dir:{export}", pretrained=True).eval()
    for key, value in reference.state_dict().items():  # the body is the export's; stem adapted, head new
        if not key.startswith(("stem.0.", "head.fc.")):
            torch.testing.assert_close(module.model.state_dict()[key], value, msg=key)
    gray = reference.stem[0].weight  # 1 -> 3 channels: an image with equal R, G, B gives the gray response
    torch.testing.assert_close(module.model.stem[0].weight.sum(dim=1, keepdim=True), gray)


def test_an_arch_that_contradicts_the_weights_is_refused_naming_both(export):
    with pytest.raises(ValueError, match=r"arch='convnext_dcls_tiny' contradicts pretrained=.*'convnext_dcls_atto'"):
        ImageClassifier(arch="convnext_dcls_tiny", pretrained=str(export), num_classes=5, in_chans=1)
    ImageClassifier(arch="convnext_dcls_atto", pretrained=str(export), num_classes=5, in_chans=1)  # the same: fine


def test_a_lightning_checkpoint_and_a_local_dir_source_bring_their_model(export, tmp_path):
    module = ImageClassifier(pretrained=f"local-dir:{export}", num_classes=10, in_chans=1)
    checkpoint = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
                "hyper_parameters": dict(module.hparams)}, checkpoint)
    again = ImageClassifier(pretrained=str(checkpoint), num_classes=4, in_chans=1)
    assert again.hparams.arch == "convnext_dcls_atto" and again.hparams.model_kwargs["dcls_kernel_size"] == [7, 5, 3, 3]
    assert again.model.head.fc.out_features == 4


def test_an_hf_hub_source_brings_its_model(export, fake_hub):
    model = dcls_zoo.create_model(f"local-dir:{export}", pretrained=True)
    dcls_zoo.push_to_hub(model, "tester/brings", local_dir=export.parent / "pushed")
    module = ImageClassifier(pretrained="hf-hub:tester/brings", num_classes=3, in_chans=1)
    assert module.hparams.arch == "convnext_dcls_atto" and module.model.head.fc.out_features == 3
    assert module.hparams.model_kwargs["stem_stride"] == 2


def test_a_tag_names_its_architecture_and_a_missing_path_is_named():
    assert weights_source("convnext_dcls_tiny.in1k").arch == "convnext_dcls_tiny"
    assert weights_source("in1k").arch is None  # a bare tag of the given arch
    with pytest.raises(ValueError, match=r"pretrained='no/such/export': no such file or directory"):
        weights_source("no/such/export")
