"""Model sources: any open_clip architecture/checkpoint, and the shared small CIFAR-10 CLIP."""

from __future__ import annotations

from clip_robust_ext.api import ClipxUsageError, LoadedCLIP, assets_dir, load_clip


def open_clip_model(
    arch: str = "ViT-B-32",
    pretrained: str | None = None,
    config: str | None = None,
    precision: str = "fp32",
    device: str = "cpu",
) -> LoadedCLIP:
    return load_clip(arch, pretrained=pretrained, config=config, precision=precision, device=device)


def small_c10(path: str | None = None, precision: str = "fp32", device: str = "cpu") -> LoadedCLIP:
    """clipx-small-c10 from $CLIPX_ASSETS/small_clip (or `path`, the folder holding it)."""
    from pathlib import Path

    folder = Path(path) if path else assets_dir() / "small_clip"
    config, weights = folder / "clipx-small-c10.json", folder / "clipx-small-c10.pt"
    if not weights.is_file():
        raise ClipxUsageError(f"clipx-small-c10 weights not found at {weights}")
    return load_clip(
        "clipx-small-c10",
        pretrained=str(weights),
        config=str(config),
        precision=precision,
        device=device,
    )


def register_all(register) -> None:
    register(
        "open_clip",
        open_clip_model,
        description="any open_clip architecture + pretrained tag or local checkpoint",
    )
    register(
        "clipx-small-c10",
        small_c10,
        description="small ViT CLIP trained on CIFAR-10 train JPEGs ($CLIPX_ASSETS/small_clip)",
    )
