"""An export is what it says: config.json is checked field by field against the record its weights
file carries (the sha256 covers that record), through ``local-dir:`` and ``hf-hub:``, and the same
weights give the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dcls_zoo
from dcls_zoo.errors import ExportMismatchError, WeightsFileError
from dcls_zoo.export_format import METADATA_KEY, read_weights_metadata

ARCH = "convnext_dcls_atto"
SMALL = {"stem": "small", "stem_stride": 2, "dims": (8, 16, 24, 32), "dcls_kernel_size": [7, 5, 3, 3]}


@pytest.fixture
def export(tmp_path) -> Path:
    model = dcls_zoo.create_model(ARCH, num_classes=10, in_chans=1, **SMALL).eval()
    return dcls_zoo.save_pretrained(model, tmp_path / "export", label_names=[f"class{i}" for i in range(10)],
                                    data_config={"input_size": (1, 32, 32), "mean": (0.5,), "std": (0.25,)})


def _edit(export: Path, change) -> None:
    config = json.loads((export / "config.json").read_text())
    change(config)
    (export / "config.json").write_text(json.dumps(config, indent=2))


# each edit changes what the loaded model computes or says, while every tensor shape still fits
EDITS = {
    "num_classes": (lambda c: c.update(num_classes=5), "config.json's num_classes is 5, but model.safetensors records 10"),
    "model_args.num_classes": (lambda c: c["model_args"].update(num_classes=5),
                               "config.json's model_args.num_classes is 5, but model.safetensors records 10"),
    "dcls_kernel_size": (lambda c: c["model_args"].update(dcls_kernel_size=[5, 5, 3, 3]),
                         "config.json's model_args.dcls_kernel_size is [5, 5, 3, 3], but model.safetensors records [7, 5, 3, 3]"),
    "stem_stride": (lambda c: c["model_args"].update(stem_stride=1),
                    "config.json's model_args.stem_stride is 1, but model.safetensors records 2"),
    "label_names": (lambda c: c.update(label_names=c["label_names"][::-1]), "config.json's label_names is"),
    "mean": (lambda c: c["pretrained_cfg"].update(mean=[0.1]),
             "config.json's pretrained_cfg.mean is [0.1], but model.safetensors records [0.5]"),
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_an_edited_config_is_refused_naming_the_field_and_both_values(export, field):
    change, message = EDITS[field]
    _edit(export, change)
    with pytest.raises(ExportMismatchError) as info:
        dcls_zoo.create_model(f"local-dir:{export}", pretrained=True)
    assert message in str(info.value) and str(export) in str(info.value)
    # the same check guards fine-tuning from the export and uploading it
    from dcls_zoo.hub import check_export

    with pytest.raises(ExportMismatchError):
        check_export(export)


def test_without_the_check_the_edits_would_change_the_outputs(export):
    """Why the check exists: timm reads config.json as it is, and shape-preserving edits load silently."""
    import timm

    x = torch.rand(2, 1, 32, 32)
    reference = dcls_zoo.create_model(f"local-dir:{export}", pretrained=True).eval()(x)
    _edit(export, lambda c: c["model_args"].update(stem_stride=1))
    edited = timm.create_model(f"local-dir:{export}", pretrained=True).eval()(x)  # timm alone: no check
    assert edited.shape == reference.shape and not torch.allclose(edited, reference, atol=1e-3)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["model_args"].update(dtype="bfloat16"), "model_args.dtype is 'bfloat16'"),
        (lambda c: c["model_args"].update(device="cuda"), "model_args.device is 'cuda'"),
    ],
)
def test_inconsistent_or_placing_config_values_are_refused_before_any_build(export, change, message):
    _edit(export, change)
    for pretrained in (True, False):  # even without weights: the config alone is read first
        with pytest.raises(WeightsFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
            dcls_zoo.create_model(f"local-dir:{export}", pretrained=pretrained)


def test_label_names_that_do_not_fit_the_classes_are_refused(export):
    _edit(export, lambda c: c.update(label_names=["a", "b", "c"]))
    with pytest.raises(WeightsFileError, match=r"label_names has 3 names for num_classes=10"):
        dcls_zoo.create_model(f"local-dir:{export}")  # the config alone
    with pytest.raises(ExportMismatchError, match=r'config.json\'s label_names is \["a", "b", "c"\], but model'):
        dcls_zoo.create_model(f"local-dir:{export}", pretrained=True)  # with the weights: their record first


def test_the_weights_record_their_config_in_one_metadata_entry(export):
    record = read_weights_metadata(export / "model.safetensors", "test")
    config = json.loads((export / "config.json").read_text())
    config.pop("dcls_zoo")
    assert record["config"] == config and record["provenance"]["architecture"] == ARCH
    from safetensors import safe_open

    with safe_open(export / "model.safetensors", "pt") as weights:
        assert set(weights.metadata()) == {METADATA_KEY}


_EXPORT_TWICE = r"""
import sys, torch, dcls_zoo
torch.manual_seed(0)
model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=10, in_chans=1, stem="small", stem_stride=2,
                              dims=(8, 16, 24, 32), dcls_kernel_size=[7, 5, 3, 3]).eval()
dcls_zoo.save_pretrained(model, sys.argv[1], label_names=[str(i) for i in range(10)])
"""


def test_the_same_weights_give_byte_identical_exports(tmp_path):
    """Two processes (each with its own hash seed: safetensors orders a metadata map per process)."""
    digests = []
    for _ in range(2):  # the same folder (the card names it), written afresh by each process
        shutil.rmtree(tmp_path / "export", ignore_errors=True)
        env = {**os.environ, "PYTHONHASHSEED": "random"}
        subprocess.run([sys.executable, "-c", _EXPORT_TWICE, str(tmp_path / "export")], check=True, env=env, timeout=600)
        digests.append({path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                        for path in sorted((tmp_path / "export").iterdir())})
    assert set(digests[0]) == {"config.json", "model.safetensors", "README.md", "positions.png"}
    assert digests[0] == digests[1]


def test_an_edited_config_on_the_hub_is_refused(tmp_path, fake_hub):
    model = dcls_zoo.create_model(ARCH, num_classes=10, in_chans=1, **SMALL).eval()
    result = dcls_zoo.push_to_hub(model, "tester/edited", local_dir=tmp_path / "export")
    dcls_zoo.create_model("hf-hub:tester/edited", pretrained=True)  # untouched: loads
    _edit(Path(result.local_dir), lambda c: c.update(num_classes=5))
    from huggingface_hub import HfApi

    HfApi().upload_file(path_or_fileobj=Path(result.local_dir) / "config.json", path_in_repo="config.json",
                        repo_id="tester/edited")
    with pytest.raises(ExportMismatchError, match=r"hf-hub:tester/edited: config.json's num_classes is 5, but "
                                                  r"model.safetensors records 10"):
        dcls_zoo.create_model("hf-hub:tester/edited", pretrained=True)
