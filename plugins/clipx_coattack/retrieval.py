"""The `coattack-retrieval` protocol: R@1/5/10 both ways, clean and under image-only KL, text-only
(KL goal; WordNet swaps by default, which need no download; the paper's BERT-Attack is
text_attack = {transformation = "bert-mlm"}), independent multimodal and Co-Attack, with attack
success rates. Fidelity to the authors' code: docs/FIDELITY.md#co-attack (caption_targets)."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from clip_robust_ext.api import (
    RETRIEVAL_FORMULAS,
    CaptionGallery,
    ClipxError,
    ClipxUsageError,
    Protocol,
    ZeroShotClassifier,
    attack_mode,
    attack_success,
    class_galleries,
    cleaned_gallery,
    format_eps,
    karpathy_gallery,
    procedural_galleries,
    recall_hits,
    seed_everything,
    verify_adversarial,
    versions,
)

from .attack import CAPTION_TARGETS, CoAttackKL, caption_targets

MODES = ("clean", "image", "text", "multimodal", "coattack")


def retrieval_attacks() -> list[str]:
    """Registered attacks of modality "retrieval" (e.g. "sga"): further modes of this protocol."""
    from clip_robust_ext.api import entries

    return [name for name, e in entries("attacks").items() if e.modality == "retrieval"]


def caption_words(value: Any) -> int | None:
    """`galleries.pre_caption`: false (captions as given), true (Co-Attack's / SGA's cleaning,
    cut to their 30 words) or a positive word limit."""
    if value is False:
        return None
    if value is True:
        return 30
    if isinstance(value, int) and value >= 1:
        return value
    raise ClipxUsageError(
        f"galleries.pre_caption: expected true, false or a positive word count, got {value!r}"
    )


def build_galleries(spec: dict[str, Any], seed: int) -> list[CaptionGallery]:
    spec = dict(spec)
    words = caption_words(spec.pop("pre_caption", False))
    galleries = _source_galleries(spec, seed)
    if words is None:
        return galleries
    return [cleaned_gallery(g, words) for g in galleries]


def _source_galleries(spec: dict[str, Any], seed: int) -> list[CaptionGallery]:
    source = spec.pop("source", "procedural")
    if source == "procedural":
        return procedural_galleries(seed=seed, **spec)
    if source == "classes":
        from clip_robust_ext.api import get

        ds_name = spec.pop("dataset", "cifar10-jpegs")
        split = spec.pop("split", "test")
        dataset = get("datasets", ds_name).obj(split=split)
        return class_galleries(dataset, seed=seed, **spec)
    if source == "karpathy":
        return [karpathy_gallery(**spec)]
    raise ClipxUsageError(
        f"retrieval galleries: source must be procedural, classes or karpathy, got {source!r}"
    )


GALLERY_SOURCES = {"procedural": procedural_galleries, "classes": class_galleries,
                   "karpathy": karpathy_gallery}  # fmt: skip


def check_galleries(spec: Any) -> None:
    """The [evaluate.galleries] table: a known source and that builder's parameters."""
    from clip_robust_ext.api import (
        closest,
        coerce,
        entries,
        signature_of,
        unknown_key,
        unknown_name,
    )

    if not isinstance(spec, dict):
        raise ClipxUsageError(f"galleries: expected a table, got {spec!r}")
    source = spec.get("source", "procedural")
    if not isinstance(source, str) or source not in GALLERY_SOURCES:
        choices = list(GALLERY_SOURCES)
        raise ClipxUsageError(
            f"galleries.source: {source!r} is not one of {', '.join(choices)}"
            f"{closest(str(source), choices)}"
        )
    params, _ = signature_of(GALLERY_SOURCES[source])
    params.pop("seed", None)  # the protocol's seed
    if source == "classes":
        params.update(dataset=str, split=str)
        dataset = spec.get("dataset", "cifar10-jpegs")
        known = entries("datasets")
        if not isinstance(dataset, str) or dataset not in known:
            raise ClipxUsageError(
                f"galleries.dataset: {unknown_name('dataset', str(dataset), known)}"
            )
    caption_words(spec.get("pre_caption", False))
    for key, value in spec.items():
        if key in ("source", "pre_caption"):
            continue
        if key not in params:
            raise unknown_key(f"galleries.{key}", ["source", "pre_caption", *params])
        coerce(value, params[key], f"galleries.{key}")


def check_text_attack(params: Any) -> None:
    """The [evaluate.text_attack] table: TextAttackConfig fields (goal and seed are the protocol's)."""
    from clip_robust_ext.api import TextAttackConfig, unknown_key

    if not isinstance(params, dict):
        raise ClipxUsageError(f"text_attack: expected a table, got {params!r}")
    allowed = [f for f in TextAttackConfig.__dataclass_fields__ if f not in ("goal", "seed")]
    for key in params:
        if key not in allowed and key != "tokenizer":
            raise unknown_key(f"text_attack.{key}", allowed)
    if not isinstance(params.get("masked_lm", ""), str):
        raise ClipxUsageError(
            f"text_attack.masked_lm: expected a hub name or a local folder, got {params['masked_lm']!r}"
        )
    plain = {k: v for k, v in params.items() if k not in ("masked_lm", "tokenizer")}
    try:
        TextAttackConfig(**plain)
    except TypeError as exc:
        raise ClipxUsageError(f"text_attack: {exc}") from None


@dataclass
class RetrievalProtocol(Protocol):
    """Co-Attack's retrieval protocol (defaults: eps 2/255, 10 steps of 1.25 eps / 10, text weight 3,
    one word changed by the text attack: WordNet by default, bert-mlm for the paper's BERT-Attack).
    caption_targets: "mean-caption" (each image attacked once against the mean of its perturbed
    captions) | "last-caption" (the authors' code: the kept image is the one attacked against its
    last caption)."""

    name: str = "coattack-retrieval"
    galleries: dict[str, Any] = field(default_factory=lambda: {"source": "procedural"})
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    steps: int = 10
    text_weight: float = 3.0
    random_start: str = "positive"
    caption_targets: str = "mean-caption"
    text_attack: dict[str, Any] = field(default_factory=lambda: {"transformation": "wordnet"})
    eps: list[float] = field(default_factory=lambda: [2 / 255])
    # parameters of the registered retrieval attacks named in `modes`, e.g. {sga = {scales = [..]}}
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        allowed = [*MODES, *retrieval_attacks()]
        bad = [m for m in self.modes if m not in allowed]
        if bad:
            raise ClipxUsageError(f"retrieval modes must be among {allowed}, got {bad}")
        if not isinstance(self.attack_params, dict):
            raise ClipxUsageError(f"attack_params: expected a table, got {self.attack_params!r}")
        for name, params in self.attack_params.items():
            if name not in self.modes or name in MODES:
                raise ClipxUsageError(
                    f"attack_params.{name}: not a retrieval attack among the modes {self.modes}"
                )
            if not isinstance(params, dict):
                raise ClipxUsageError(f"attack_params.{name}: expected a table, got {params!r}")
            from clip_robust_ext.api import check_kwargs, get

            # here, so `clipx recipe show` catches them (eps is the protocol's)
            for key in ("model", "eps"):
                if key in params:
                    raise ClipxUsageError(
                        f"attack_params.{name}.{key}: set by the protocol (evaluate.eps), not per attack"
                    )
            check_kwargs(params, get("attacks", name).obj, f"attack_params.{name}")
        if self.caption_targets not in CAPTION_TARGETS:
            raise ClipxUsageError(
                f"caption_targets must be one of {CAPTION_TARGETS}, got {self.caption_targets!r}"
            )
        check_galleries(self.galleries)  # here, so `clipx recipe show` catches them
        check_text_attack(self.text_attack)

    def evaluate_with(
        self, loaded, run_dir, label: str, resume: bool = True, progress: bool = True
    ) -> list[dict]:
        from clip_robust_ext.api import (
            CLIPTextAttacker,
            config_from_params,
            read_json,
            result_path,
            write_result,
        )

        # the engine's record store and rule: the key covers the settings and the model weights,
        # so another checkpoint under the same label is evaluated, not served the old numbers
        path = result_path(run_dir, label, self.name, "retrieval")
        key = self._store_key(loaded)
        saved = read_json(path) if resume else None
        if saved is not None and saved.get("protocol_key") == key:
            return saved["records"]
        started = time.time()
        zs = ZeroShotClassifier(loaded, classnames=["object"])
        zs.eval()
        config, mlm, tok = config_from_params(goal="kl", seed=self.seed, **self.text_attack)
        attacker = CLIPTextAttacker(zs, config, masked_lm=mlm, tokenizer=tok)
        galleries = build_galleries(self.galleries, self.seed)
        hits, text_info, attack_info = self._hits(zs, attacker, galleries)
        counts = {
            "n_images": sum(len(g.images) for g in galleries),
            "n_texts": sum(len(g.texts) for g in galleries),
            "n": sum(len(g.images) for g in galleries),
        }
        out = []
        for eps in self.eps:
            clean = _recall(hits[("clean", eps)])
            for mode in self.modes:
                recall = _recall(hits[(mode, eps)])
                text = {**text_info, "config": config.to_dict()}
                out.append(
                    {
                        "kind": "retrieval",
                        "protocol": self.name,
                        "label": label,
                        "attack": mode,
                        "dataset": self.galleries.get("source", "procedural"),
                        **counts,
                        "eps": None if mode in ("clean", "text") else eps,
                        "eps_str": format_eps(eps),
                        "norm": "Linf",
                        "recall": recall,
                        "asr": attack_success(clean, recall),
                        "text_attack": text
                        if mode in ("text", "multimodal", "coattack")
                        else attack_info.get((mode, eps)),
                        "steps": self.steps,
                        "text_weight": self.text_weight,
                        "seed": self.seed,
                        "formulas": RETRIEVAL_FORMULAS,
                        "units": "percent",
                        "versions": versions(),
                        "elapsed_s": time.time() - started,
                    }
                )
        write_result(path, {"protocol_key": key, "records": out})
        return out

    def _store_key(self, loaded) -> str:
        """The result store's key: the settings, the code of the plugins that compute it (this
        protocol's, every retrieval attack's) and the model weights."""
        from clip_robust_ext.api import component_fingerprint, model_fingerprint

        code = [component_fingerprint("evaluators", self.name)]
        code += [component_fingerprint("attacks", m) for m in self.modes if m not in MODES]
        return (
            repr(sorted(self.to_dict().items()))
            + f"|code={code!r}"
            + "|model="
            + model_fingerprint(loaded.model)
        )

    def _hits(self, zs, attacker, galleries) -> tuple[dict, dict[str, Any], dict]:
        """Per (mode, eps): the recall hits of every gallery; the text attack's counts; the
        retrieval attacks' counts (summed over the galleries)."""
        hits: dict[tuple[str, float], dict[str, list[torch.Tensor]]] = {}
        text_info = {"perturbed": 0, "total": 0, "kl_mean": 0.0}
        attack_info: dict[tuple[str, float], dict[str, Any]] = {}
        kl_sum = 0.0
        need_text = any(m in ("text", "multimodal", "coattack") for m in self.modes)
        for g_index, gallery in enumerate(galleries):
            images, owner = gallery.images.to(zs.device), gallery.text_owner
            with torch.no_grad():
                img_clean = zs.encode_image(images)
                txt_clean = zs.encode_text(gallery.texts)
            txt_adv = None
            if need_text:
                records = attacker.attack_texts(gallery.texts)
                with torch.no_grad():
                    txt_adv = zs.encode_text([r.perturbed for r in records])
                text_info["total"] += len(records)
                text_info["perturbed"] += sum(r.status == "perturbed" for r in records)
                kl_sum += sum(r.score for r in records if r.status == "perturbed")
            for eps in self.eps:
                sims = self._similarities(
                    zs, gallery, g_index, eps, (img_clean, txt_clean, txt_adv), attack_info
                )
                for mode in self.modes:
                    for k, v in recall_hits(sims[mode], owner, self.ks).items():
                        hits.setdefault((mode, eps), {}).setdefault(k, []).append(v.cpu())
        if text_info["perturbed"]:
            text_info["kl_mean"] = kl_sum / text_info["perturbed"]
        return hits, text_info, attack_info

    def _similarities(self, zs, gallery, g_index, eps, embedded, attack_info) -> dict:
        """Image-text similarities of one gallery at one eps, clean and under each mode."""
        img_clean, txt_clean, txt_adv = embedded
        images, owner = gallery.images.to(zs.device), gallery.text_owner
        need_text = txt_adv is not None
        sims: dict[str, torch.Tensor] = {"clean": img_clean @ txt_clean.t()}
        if any(m in ("image", "multimodal") for m in self.modes):
            img_only = self._image_attack(zs, images, eps, 0.0, None, g_index, "image")
            with torch.no_grad():
                e = zs.encode_image(img_only)
            sims["image"] = e @ txt_clean.t()
            if need_text:
                sims["multimodal"] = e @ txt_adv.t()
        if need_text:
            sims["text"] = img_clean @ txt_adv.t()
        for mode in (m for m in self.modes if m not in MODES):
            sims[mode], info = self._retrieval_attack(zs, mode, gallery, eps, g_index)
            total = attack_info.setdefault((mode, eps), {})
            for k, v in info.items():  # counts, summed over the galleries
                total[k] = total.get(k, 0) + v
        if "coattack" in self.modes:
            own = caption_targets(txt_adv, owner, len(images), self.caption_targets)
            co = self._image_attack(zs, images, eps, self.text_weight, own, g_index, "coattack")
            with torch.no_grad():
                sims["coattack"] = zs.encode_image(co) @ txt_adv.t()
        return sims

    def _retrieval_attack(self, zs, mode, gallery, eps, g_index) -> tuple[torch.Tensor, dict]:
        """A registered retrieval attack (e.g. SGA) on one gallery: (similarities, its info)."""
        from clip_robust_ext.api import get

        # seeded like the built-in modes, apart from them, and by name (not by position in modes)
        seed_everything(self.seed * 7919 + g_index * 31 + 2 + zlib.crc32(mode.encode()) % 9973)
        params = {"steps": self.steps, "text_attack": dict(self.text_attack), "seed": self.seed}
        params.update(self.attack_params.get(mode, {}))
        images = gallery.images.to(zs.device)
        attack = get("attacks", mode).obj(zs, eps=eps, **params)
        with attack_mode(zs):
            out = attack(images, gallery.texts, gallery.text_owner)
        verify_adversarial(images, out.images, eps, "Linf", f"coattack-retrieval/{mode}")
        if len(out.texts) != len(gallery.texts):
            raise ClipxError(
                f"retrieval attack '{mode}' returned {len(out.texts)} captions for {len(gallery.texts)}"
            )
        with torch.no_grad():
            sims = zs.encode_image(out.images) @ zs.encode_text(out.texts).t()
        return sims, out.info

    def _image_attack(self, zs, images, eps, weight, text_emb, g_index, mode) -> torch.Tensor:
        seed_everything(self.seed * 7919 + g_index * 31 + (1 if mode == "coattack" else 0))
        atk = CoAttackKL(
            zs, eps=eps, steps=self.steps, text_weight=weight, random_start=self.random_start
        )
        with attack_mode(zs):
            adv = atk(images, text_emb)
        verify_adversarial(images, adv, eps, "Linf", f"coattack-retrieval/{mode}")
        return adv


def _recall(hits: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Recall@K in percent from the per-gallery hit vectors."""
    return {k: 100.0 * torch.cat(v).float().mean().item() for k, v in hits.items()}
