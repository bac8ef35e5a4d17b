"""torch.hub entry points of dcls-zoo: one per registered model (DCLS models and the paper's baselines).

    import torch
    torch.hub.list("<owner>/dcls-zoo:<ref>")                      # every model name
    print(torch.hub.help("<owner>/dcls-zoo:<ref>", "convnext_dcls_tiny"))
    model = torch.hub.load("<owner>/dcls-zoo:<ref>", "convnext_dcls_tiny", pretrained=True)
    model = torch.hub.load("/path/to/checkout", "convnext_dcls_atto", source="local", num_classes=10)

Each entry point is ``dcls_zoo.create_model(<name>, pretrained=..., revision=..., **kwargs)``; the
entry points are generated from the model registry, so a newly registered model appears here.
Pretrained weights come through ``huggingface_hub`` (safetensors, checksums, ``HF_HUB_OFFLINE``),
else the authors' released files converted on load (see ``dcls_zoo/weights/pretrained.py``).

torch.hub imports this file with the repository root on ``sys.path``; a ``dcls_zoo`` already
imported in the calling process (an installed copy) is used instead of the checkout's.
"""

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

import textwrap as _textwrap  # noqa: E402  (after `dependencies`, torch.hub's convention)

import timm as _timm  # noqa: E402

import dcls_zoo as _dcls_zoo  # noqa: E402
from dcls_zoo.weights.table import describe_weights as _describe_weights  # noqa: E402

_COMMON_ARGS = """
Args:
    pretrained: False (random initialisation), True (the default pretrained tag) or a tag name
        (e.g. "in1k").
{weights}
    revision: load the weights from this revision (branch, tag or commit) of the model's Hugging
        Face Hub repo only, with no fallback; needs pretrained.
    num_classes: classifier outputs (a pretrained head is dropped when it differs).
    **kwargs: further arguments of dcls_zoo.create_model / timm.create_model: drop_path_rate,
        in_chans, features_only, global_pool, cache_dir, pretrained_cfg_overlay, and the model's own
        arguments (e.g. depths, dims, dcls_kernel_size, dcls_kernel_count, stem).

Returns:
    The torch.nn.Module (timm model; with features_only, timm's feature extractor).

Example:
    model = torch.hub.load("<owner>/dcls-zoo:<ref>", "{name}", num_classes=10)
"""


def _entrypoint(name: str):
    """A torch.hub entry point building ``name``, with the registered builder's docstring."""

    def entrypoint(pretrained=False, *, revision=None, num_classes=None, **kwargs):
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return _dcls_zoo.create_model(name, pretrained=pretrained, revision=revision, **kwargs)

    summary = (_timm.models.model_entrypoint(name).__doc__ or name).strip()
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    weights = _textwrap.fill(
        "Weights: " + _describe_weights(name), width=100, initial_indent=" " * 8, subsequent_indent=" " * 8
    )
    entrypoint.__doc__ = summary + "\n" + _COMMON_ARGS.format(weights=weights, name=name)
    return entrypoint


def create_model(name, pretrained=False, **kwargs):
    """Any model dcls-zoo can build, by name or source: ``dcls_zoo.create_model(name, ...)``.

    ``torch.hub.load(repo, "create_model", "hf-hub:org/name", pretrained=True)`` loads a pushed export
    (sha256-checked), ``"local-dir:/path"`` a saved one, ``"convnext_dcls_tiny.in1k"`` a tag.
    """
    return _dcls_zoo.create_model(name, pretrained=pretrained, **kwargs)


for _name in _dcls_zoo.list_models():
    globals()[_name] = _entrypoint(_name)
del _name
