"""Named evaluation protocols (ANCHORS.md E). Each factory takes overrides of Protocol fields."""

from __future__ import annotations

from typing import Any

from clip_robust_ext.api import Protocol


def _tecoa16() -> list[str]:
    from clip_robust_ext.api import TECOA_16

    return list(TECOA_16)


# FARE / RobustVLM zero-shot suite as far as the dataset registry has it (CLIP_benchmark names
# mapped to ours; ImageNet-R and ImageNet-Sketch are not in the registry).
FARE_DATASETS = (
    "imagenet",
    "caltech101",
    "stanford_cars",
    "cifar10",
    "cifar100",
    "dtd",
    "eurosat",
    "fgvc_aircraft",
    "flowers102",
    "oxfordpets",
    "pcam",
    "stl10",
)
AA_LITE = {"name": "autoattack", "params": {"version": "custom", "attacks": ["apgd-ce", "apgd-t"]}}

# What each lineage's evaluation code does (read from their repositories; docs/FIDELITY.md).
TECOA_LINEAGE = (
    "TeCoA utils.py (also PMG-AFT, TGA-ZSR, SAFT): CIFAR-10/100, STL-10 (and Tiny-ImageNet) "
    "attacked at native resolution and upsampled to 224 inside the model; others "
    "Resize(256)+CenterCrop(224) (clipx: Resize(224)+CenterCrop(224)); one template "
    "'This is a photo of a {}'; full test sets; PGD-100, 1 restart, CE"
)
ROBUSTVLM_LINEAGE = (
    "RobustVLM CLIP_benchmark cli.py: CIFAR-10/100, STL-10 attacked at native resolution "
    "(resized to 224 bicubic inside the model), others at 224 (Resize(224, bicubic)+CenterCrop; "
    "clipx: bilinear); CLIP_benchmark's per-dataset templates (clipx: the OpenAI ImageNet "
    "ensemble for all); 1000 samples from a seeded webdataset shuffle (clipx: seeded choice); "
    "AutoAttack 'custom' APGD-CE + APGD-T, 100 iterations (APGD-CE only for 2 classes)"
)


def tecoa16(**overrides: Any) -> Protocol:
    return Protocol(
        name="tecoa-16",
        attacks=[
            {
                "name": "pgd",
                "label": "pgd-100",
                "params": {"steps": 100, "alpha": "1/255", "random_start": True},
            }
        ],
        eps=["1/255"],
        templates=["This is a photo of a {}"],
        datasets=_tecoa16(),
        n_samples=None,
        early_exit=False,  # the lineage scores PGD's final iterate
        description="TeCoA/PMG-AFT/TGA-ZSR/SAFT: PGD-100 (step 1/255, 1 restart, CE, final "
        "iterate), Linf 1/255, full test sets, 'This is a photo of a {}'",
        lineage=TECOA_LINEAGE,
    ).with_overrides(**overrides)


def autoattack(**overrides: Any) -> Protocol:
    return Protocol(
        name="autoattack",
        attacks=[AA_LITE],
        eps=["1/255"],
        templates=["This is a photo of a {}"],
        datasets=_tecoa16(),
        description="AutoAttack APGD-CE + APGD-T (100 iterations, 1 restart, 9 targets; APGD-CE "
        "only for 2-class sets), Linf 1/255, TeCoA suite and template",
    ).with_overrides(**overrides)


def autoattack_full(**overrides: Any) -> Protocol:
    return Protocol(
        name="autoattack-full",
        attacks=[{"name": "autoattack", "params": {"version": "standard"}}],
        eps=["1/255"],
        templates=["This is a photo of a {}"],
        datasets=_tecoa16(),
        description="AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), Linf 1/255",
    ).with_overrides(**overrides)


def fare_aa(**overrides: Any) -> Protocol:
    return Protocol(
        name="fare-aa",
        attacks=[AA_LITE],
        eps=["1/255", "2/255", "4/255"],
        n_samples=1000,
        templates="openai-imagenet",
        datasets=list(FARE_DATASETS),
        description="FARE/RobustBench-CLIP: APGD-CE + APGD-T 100 iterations, Linf 1, 2, 4 /255, "
        "1000 samples per dataset, template ensemble",
        lineage=ROBUSTVLM_LINEAGE,
    ).with_overrides(**overrides)


def pgd(
    steps: int = 10, alpha: str | float | None = None, random_start: bool = True, **overrides: Any
) -> Protocol:
    """PGD-`steps` with step `alpha` (default 2.5 * eps / steps, Madry et al.)."""
    alpha = alpha if alpha is not None else f"2.5*eps/{steps}"
    return Protocol(
        name="pgd",
        attacks=[
            {
                "name": "pgd",
                "label": f"pgd-{steps}",
                "params": {"steps": steps, "alpha": alpha, "random_start": random_start},
            }
        ],
        eps=["1/255"],
        templates=["This is a photo of a {}"],
        datasets=["cifar10"],
        description="PGD (configurable steps / alpha), Linf; early exit (early_exit = false: "
        "final iterate)",
    ).with_overrides(**overrides)


def clean(**overrides: Any) -> Protocol:
    return Protocol(
        name="clean",
        attacks=[],
        templates=["This is a photo of a {}"],
        datasets=["cifar10"],
        description="clean zero-shot accuracy only",
    ).with_overrides(**overrides)


def mmcoa(**overrides: Any) -> Protocol:
    return Protocol(
        name="mmcoa",
        attacks=[
            {
                "name": "pgd",
                "label": "image-pgd-100",
                "params": {"steps": 100, "alpha": "1/255", "random_start": True},
            },
            {"name": "text-attack", "label": "text"},
            {"name": "multimodal", "label": "multimodal"},
        ],
        eps=["1/255"],
        templates=["This is a photo of a {}"],
        datasets=[d for d in _tecoa16() if d != "tinyimagenet"],
        early_exit=False,  # MMCoA's attack_pgd (TeCoA's) scores the final iterate
        description="MMCoA: clean, image PGD-100 (final iterate), text attack, multimodal attack (Linf 1/255); "
        "text/multimodal attacks come from the clipx_mmcoa plugin",
    ).with_overrides(**overrides)


def transfer_views(dataset: str = "cifar10-jpegs", split: str = "test") -> list[dict[str, Any]]:
    """The zero-shot views of a dataset with a declared seen / unseen split: the unseen classes
    (zero-shot over their names: the headline number), the same images scored over every class
    name (the generalised setting), and the seen classes."""
    return [
        {"dataset": dataset, "split": split, "classes": "unseen"},
        {"dataset": dataset, "split": split, "classes": "unseen", "label_space": "all"},
        {"dataset": dataset, "split": split, "classes": "seen"},
    ]


def transfer(**overrides: Any) -> Protocol:
    return Protocol(
        name="transfer",
        attacks=[
            {
                "name": "pgd",
                "label": "pgd-10",
                "params": {"steps": 10, "alpha": "eps/4", "random_start": True},
            },
            {
                "name": "autoattack",
                "label": "apgd-ce",
                "params": {"version": "custom", "attacks": ["apgd-ce"]},
            },
        ],
        eps=["1/255", "2/255"],
        templates=["This is a photo of a {}"],
        datasets=transfer_views(),
        n_samples=500,
        cascade=True,
        description="zero-shot transfer: unseen classes (their names; all names), seen classes, "
        "and any other dataset listed; PGD-10, then APGD-CE (100 iterations) on the PGD survivors "
        "(cascade: per-attack numbers are cumulative; cascade = false for standalone ones), "
        "worst case per sample, Linf 1/255 and 2/255",
    ).with_overrides(**overrides)


def certify(
    sigma: float = 0.25,
    n0: int = 100,
    n_draws: int = 1000,
    alpha: float = 0.001,
    noise_batch: int = 100,
    attack_steps: int = 10,
    eot_draws: int = 8,
    **overrides: Any,
) -> Protocol:
    """Randomized smoothing on the transfer views; the radii are L2 budgets in [0, 1] pixels."""
    from clip_robust_ext.api import CertifyProtocol

    return CertifyProtocol(
        sigma=sigma,
        n0=n0,
        n_draws=n_draws,
        alpha=alpha,
        noise_batch=noise_batch,
        attack_steps=attack_steps,
        eot_draws=eot_draws,
        eps=[0.0, 0.25, 0.5, 1.0],
        norm="L2",
        attacks=[],
        templates=["This is a photo of a {}"],
        datasets=transfer_views(),
        n_samples=100,
        checks="off",
        description="randomized smoothing (Cohen et al. 2019; sigma 0.25, n0 100, n 1000, alpha "
        "0.001): certified L2 accuracy and abstention at radii 0, 0.25, 0.5, 1, next to PGD-L2 "
        "(10 steps, EOT over 8 draws) against the same smoothed classifier",
    ).with_overrides(**overrides)


def checks(**overrides: Any) -> Protocol:
    """For leaderboard submissions: attacks with a strength order, an eps sweep, every
    attack-strength check (Square and 16/255 on the probe inputs) and failures as errors."""
    return Protocol(
        name="checks",
        attacks=[
            {
                "name": "pgd",
                "label": "pgd-10",
                "params": {"steps": 10, "alpha": "eps/4", "random_start": True},
            },
            {
                "name": "pgd",
                "label": "pgd-50",
                "params": {"steps": 50, "alpha": "eps/10", "random_start": True},
            },
        ],
        eps=["1/255", "2/255", "4/255", "8/255"],
        templates=["This is a photo of a {}"],
        datasets=["cifar10"],
        n_samples=1000,
        checks="full",
        checks_strict=True,
        description="attack-strength checks: PGD-10 and PGD-50 at 1, 2, 4, 8 /255, every check "
        "(gradients, randomness, loss curve, Square, 16/255) and a failed check is an error",
    ).with_overrides(**overrides)


PRESETS = {
    "tecoa-16": (tecoa16, "PGD-100 step 1/255, Linf 1/255, TeCoA 16-dataset suite, one template"),
    "autoattack": (autoattack, "APGD-CE + APGD-T (fra31 settings), Linf 1/255, TeCoA suite"),
    "autoattack-full": (autoattack_full, "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)"),
    "fare-aa": (fare_aa, "APGD-CE + APGD-T at 1, 2, 4 /255 on 1000 samples per dataset (FARE)"),
    "pgd": (pgd, "PGD with configurable steps/alpha (default PGD-10, step 2.5 eps/steps)"),
    "clean": (clean, "clean zero-shot accuracy only"),
    "mmcoa": (mmcoa, "clean, image PGD-100, text and multimodal attacks (MMCoA)"),
    "transfer": (
        transfer,
        "zero-shot transfer: unseen / seen classes (+ other datasets), PGD-10 + APGD-CE at 1, 2 /255",
    ),
    "certify": (
        certify,
        "randomized smoothing: certified L2 accuracy, abstention and PGD-L2 (EOT) per view",
    ),
    "checks": (checks, "PGD-10 / PGD-50 eps sweep with every attack-strength check, strict"),
}


def register_all(register) -> None:
    for name, (factory, description) in PRESETS.items():
        register(name, factory, description=description)
