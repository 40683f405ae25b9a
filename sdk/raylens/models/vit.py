"""Vision Transformers through transformers, registered as classifiers: ``vit`` and its presets.

* ``vit``: any size (``hidden_size``, ``num_layers``, ``num_heads``, ...), from a config or from a
  ``save_pretrained`` folder (``pretrained=DIR``: transformers' or ours);
* ``vit_tiny``: DeiT-Ti (192 wide, 12 layers, 3 heads, 5.5M parameters) at any
  ``image_size``/``patch_size``; the other DeiT sizes are ``vit`` with :data:`PRESETS`
  (``create_model("vit", **PRESETS["vit_small"], num_classes=10)``).

On small images the patch sets the cost: digits at 32x32 are 4 tokens with the default 16x16 patches
and 16 with ``patch_size=8``, which costs ~3x more per image; trained from scratch on scikit-learn's
digits, the 4-token model also reached the higher accuracy (see ``examples/classify_digits.py``).
timm's ViT, DeiT and Swin are there too, by timm name (``timm/vit_tiny_patch16_224``).
Weights are saved as transformers' ``save_pretrained`` files, with our keys merged into its
``config.json`` (see :mod:`raylens.models.hf_vit`).

>>> from raylens.models import create_model
>>> vit = create_model("vit_tiny", num_classes=10, image_size=32, patch_size=8)
>>> vit(vit.example_input()).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raylens.models.classifier_hub import finish_classifier, load_pretrained
from raylens.models.registry import ModelRecord, attach_record, register_model

__all__ = ["PRESETS", "vit", "vit_tiny", "build_vit"]

PRESETS: dict[str, dict[str, int]] = {
    "vit_tiny": {"hidden_size": 192, "num_layers": 12, "num_heads": 3},
    "vit_small": {"hidden_size": 384, "num_layers": 12, "num_heads": 6},
    "vit_base": {"hidden_size": 768, "num_layers": 12, "num_heads": 12},
}
"""The widths, depths and heads of DeiT's Ti, S and B sizes (``vit_tiny`` is registered by name)."""


def build_vit(
    arch: str,
    *,
    num_classes: int | None,
    pretrained: str | None = None,
    reset_head: bool = False,
    **architecture: Any,
):
    """Build (or load) a :class:`~raylens.models.hf_vit.ViTClassifier` recorded as ``arch``.

    With ``pretrained`` a ``save_pretrained`` folder, the folder's architecture is used (a preset
    checks that it matches); ``num_classes`` other than the folder's needs ``reset_head``. A
    ``.safetensors`` file is loaded into the architecture built from the arguments.
    """
    from raylens.models.hf_vit import ViTClassifier, architecture_of, config_from_folder, vit_config

    if pretrained is not None and Path(pretrained).expanduser().is_dir():
        folder = Path(pretrained).expanduser()
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"pretrained={pretrained!r}: no save_pretrained ViT folder there (config.json + model.safetensors)"
            )
        saved = architecture_of(config_from_folder(folder))
        if arch in PRESETS and any(saved[k] != v for k, v in PRESETS[arch].items()):
            raise ValueError(
                f"{pretrained!r} holds a ViT {saved['hidden_size']} wide with {saved['num_layers']} layers, "
                f"not a {arch}; load it with create_model('vit', pretrained=...)"
            )
        model = ViTClassifier.from_folder(folder)
        if num_classes is not None and num_classes != model.num_classes:
            if not reset_head:
                raise ValueError(
                    f"{pretrained!r} holds a {model.num_classes}-class head but num_classes={num_classes} was asked "
                    "for: pass reset_head=True to keep every other weight and train a new head"
                )
            model.reset_head(num_classes)
        config = architecture_of(model.config)
        if arch in PRESETS:
            config = {
                k: config[k] for k in ("num_classes", "image_size", "patch_size", "mlp_ratio", "dropout", "in_chans")
            }
        return attach_record(model, ModelRecord("classifier", arch, config))
    config = {"num_classes": 1000 if num_classes is None else num_classes, **architecture}
    model = ViTClassifier(vit_config(**{**PRESETS.get(arch, {}), **config}))
    if pretrained is not None:
        load_pretrained(model, pretrained, reset_head=reset_head)
    return finish_classifier(model, arch, config)


def _save(model, directory: Path) -> str:
    return model.save_folder(directory)


def _load(checkpoint, device):
    from raylens.models.hf_vit import ViTClassifier

    model = ViTClassifier.from_folder(checkpoint.directory)
    return attach_record(model, ModelRecord(checkpoint.kind, checkpoint.arch, checkpoint.model_config))


_HOOKS = {"save": _save, "load": _load}
_TINY = {"num_classes": 3, "image_size": 16, "patch_size": 8}


@register_model(
    "vit", kind="classifier", test_overrides={**_TINY, "hidden_size": 32, "num_layers": 2, "num_heads": 2}, **_HOOKS
)
def vit(
    num_classes: int | None = None,
    image_size: int = 224,
    patch_size: int = 16,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    mlp_ratio: float = 4.0,
    dropout: float = 0.0,
    in_chans: int = 3,
    pretrained: str | None = None,
    reset_head: bool = False,
):
    """ViT (transformers) of any size, or from a save_pretrained folder (pretrained=DIR); logits out."""
    return build_vit(
        "vit",
        num_classes=num_classes,
        pretrained=pretrained,
        reset_head=reset_head,
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        dropout=dropout,
        in_chans=in_chans,
    )


def _preset(name: str):
    def factory(
        num_classes: int | None = None,
        image_size: int = 224,
        patch_size: int = 16,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        in_chans: int = 3,
        pretrained: str | None = None,
        reset_head: bool = False,
    ):
        return build_vit(
            name,
            num_classes=num_classes,
            pretrained=pretrained,
            reset_head=reset_head,
            image_size=image_size,
            patch_size=patch_size,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            in_chans=in_chans,
        )

    p = PRESETS[name]
    factory.__name__ = name
    factory.__doc__ = (
        f"ViT {name[4:]} (transformers; {p['hidden_size']} wide, {p['num_layers']} layers, {p['num_heads']} heads); "
        "set image_size/patch_size for small images."
    )
    return register_model(name, kind="classifier", test_overrides=_TINY, **_HOOKS)(factory)


vit_tiny = _preset("vit_tiny")
