"""Baseline defenses (clipx_baselines): registration, parameters, and what each loss computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_clip

from clip_robust_ext import get, names
from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import ZeroShotClassifier
from clip_robust_ext.training import Batch, TrainContext, clip_contrastive_loss
from clip_robust_ext.training.trainer import fp32_attack_builder

BASELINES = ["ft-standard", "tecoa", "pmg-aft", "fare"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _setup(needs_reference: bool, n: int = 8, seed: int = 0):
    data = ProceduralShapes("train", n=n, seed=seed)
    loaded = tiny_clip(seed)
    zs = ZeroShotClassifier(loaded, data.classnames)
    ref = None
    if needs_reference:
        import copy

        ref = (
            ZeroShotClassifier(copy.deepcopy(loaded), data.classnames).eval().requires_grad_(False)
        )
    ctx = TrainContext(
        model=zs,
        reference=ref,
        classnames=data.classnames,
        templates=zs.templates,
        device=torch.device("cpu"),
        build_attack=fp32_attack_builder,
    )
    xs, ys = zip(*(data[i] for i in range(n)))
    batch = Batch(
        torch.stack(xs), torch.tensor(ys), [data.caption(i) for i in range(n)], torch.arange(n)
    )
    return zs, ctx, batch


def test_registered_with_paper_defaults():
    assert set(BASELINES) <= set(names("defenses"))
    tecoa = get("defenses", "tecoa").obj()
    assert (tecoa.eps, tecoa.alpha, tecoa.steps, tecoa.trainable) == (1 / 255, 1 / 255, 2, "visual")
    assert tecoa.config() == {"eps": "1/255", "alpha": "1/255", "steps": 2}
    fare = get("defenses", "fare").obj(eps="2/255")
    assert (fare.eps, fare.steps, fare.needs_reference, fare.train_defaults["optimizer"]) == (
        2 / 255,
        10,
        True,
        "adamw",
    )
    assert get("defenses", "pmg-aft").obj().reduction == "sum"
    assert get("defenses", "ft-standard").obj().trainable == "both"
    with pytest.raises(ClipxUsageError, match="did you mean 'steps'"):
        get("defenses", "tecoa").obj(stepz=3)
    assert get("defenses", "pmg-aft").obj().logits == "cosine"  # the authors' code
    with pytest.raises(ClipxUsageError, match="logits"):
        get("defenses", "pmg-aft").obj(logits="scale")
    with pytest.raises(ClipxUsageError, match="reduction"):
        get("defenses", "pmg-aft").obj(reduction="mean")
    with pytest.raises(ClipxUsageError, match="eps"):
        get("defenses", "tecoa").obj(eps="300/255")


def test_tecoa_is_ce_on_pgd_examples_and_trains_vision_only():
    zs, ctx, batch = _setup(False)
    defense = get("defenses", "tecoa").obj(eps="4/255", alpha="2/255", steps=3)
    torch.manual_seed(0)
    loss, metrics = defense.loss(batch, ctx)
    torch.manual_seed(0)
    x_adv = ctx.attack("pgd", eps=4 / 255, alpha=2 / 255, steps=3, random_start=True)(
        batch.images, batch.labels
    ).images
    assert (x_adv - batch.images).abs().max() <= 4 / 255 + 1e-6
    expected = F.cross_entropy(zs(x_adv), batch.labels)
    torch.testing.assert_close(loss, expected)
    clean = F.cross_entropy(zs(batch.images), batch.labels)
    assert loss > clean  # the examples are adversarial
    loss.backward()
    assert zs.clip.visual.conv1.weight.grad is not None
    assert zs.clip.token_embedding.weight.grad is None  # the class matrix is fixed (no text grad)
    assert 0 <= metrics["adv_acc"] <= 1


def test_pmg_aft_terms_and_reduction():
    zs, ctx, batch = _setup(True)
    torch.manual_seed(0)
    loss_sum, m_sum = get("defenses", "pmg-aft").obj().loss(batch, ctx)
    torch.manual_seed(0)
    loss_mean, m_mean = get("defenses", "pmg-aft").obj(reduction="batchmean").loss(batch, ctx)
    # model == reference at the start: KL(P_ref(x_adv) || P(x_adv)) is zero
    assert abs(float(m_sum["kl_ref"])) < 1e-5
    assert float(m_sum["kl_clean"]) > 0
    assert float(m_sum["kl_clean"]) == pytest.approx(
        len(batch.labels) * float(m_mean["kl_clean"]), rel=1e-4
    )
    torch.testing.assert_close(loss_sum, m_sum["ce"] + m_sum["kl_ref"] + m_sum["kl_clean"])
    loss_sum.backward()
    assert zs.clip.visual.conv1.weight.grad is not None


def _reference_pgd(logits_fn, x, y, eps, alpha, steps):
    """TeCoA-lineage PGD written from the description: uniform start, sign steps, CE."""
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        grad = torch.autograd.grad(F.cross_entropy(logits_fn(adv), y), adv)[0]
        adv = (x + (adv.detach() + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


def _authors_pmg_logits(classifier, images):
    """PMG-AFT's wrapper as its code behaves: the logit-scaled text embedding is re-normalised
    (which removes the scale) before the product with the normalised image embedding."""
    text = classifier.logit_scale() * classifier.class_matrix()
    text = text / text.norm(dim=-1, keepdim=True)
    image = classifier.encode_image(images, normalize=False)
    return (image / image.norm(dim=-1, keepdim=True)) @ text.t()


def _pmg_aft_against_written_reference(logits: str) -> float:
    """Checks the defense's loss against the objective written here; returns KL_clean."""
    zs, ctx, batch = _setup(True)
    with torch.no_grad():  # move the model away from the reference so KL_ref is not zero
        torch.manual_seed(1)
        for p in zs.clip.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    zs.eval()
    if logits == "cosine":

        def fn(model, x):
            return _authors_pmg_logits(model, x)
    else:

        def fn(model, x):
            return model.logit_scale() * model.encode_image(x) @ model.class_matrix().t()

    eps, alpha = 4 / 255, 1 / 255
    defense = get("defenses", "pmg-aft").obj(eps="4/255", steps=3, logits=logits)
    assert defense.config()["logits"] == logits
    torch.manual_seed(0)
    loss, metrics = defense.loss(batch, ctx)
    torch.manual_seed(0)
    x_adv = _reference_pgd(lambda x: fn(zs, x), batch.images, batch.labels, eps, alpha, 3)
    with torch.no_grad():
        adv, clean, ref = fn(zs, x_adv), fn(zs, batch.images), fn(ctx.reference, x_adv)
        log_adv = adv.log_softmax(1)
        kl_ref = (ref.softmax(1) * (ref.log_softmax(1) - log_adv)).sum()
        kl_clean = (clean.softmax(1) * (clean.log_softmax(1) - log_adv)).sum()
        expected = F.cross_entropy(adv, batch.labels) + kl_ref + kl_clean
    torch.testing.assert_close(metrics["kl_ref"], kl_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(metrics["kl_clean"], kl_clean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)
    return float(metrics["kl_clean"])


def test_pmg_aft_logits_option_reproduces_each_objective():
    # default 'cosine' = the authors' code (softmax of plain cosines); 'scaled' = 100 x cos.
    # The same batch and model: at temperature 1 the KL terms are far smaller.
    cosine = _pmg_aft_against_written_reference("cosine")
    scaled = _pmg_aft_against_written_reference("scaled")
    assert 0 < cosine < scaled / 10


def test_fare_embedding_attack_and_loss():
    from clipx_baselines.fare_attack import EmbeddingPGD, embedding_l2

    zs, ctx, batch = _setup(True)
    target = zs.encode_image(batch.images, normalize=False).detach()
    torch.manual_seed(0)
    x_adv = EmbeddingPGD(zs, eps=4 / 255, alpha=1 / 255, steps=5)(batch.images, target)
    torch.manual_seed(0)
    x_rand = (batch.images + torch.empty_like(batch.images).uniform_(-4 / 255, 4 / 255)).clamp(0, 1)
    with torch.no_grad():
        d_adv = embedding_l2(zs.encode_image(x_adv, normalize=False), target).mean()
        d_rand = embedding_l2(zs.encode_image(x_rand, normalize=False), target).mean()
    assert (
        (x_adv - batch.images).abs().max() <= 4 / 255 + 1e-6
        and x_adv.min() >= 0
        and x_adv.max() <= 1
    )
    assert d_adv > 3 * d_rand  # the inner max finds far worse points than random noise

    torch.manual_seed(0)
    loss, metrics = get("defenses", "fare").obj(eps="4/255", steps=5).loss(batch, ctx)
    assert float(loss.detach()) > 0 and "loss_adv" in metrics
    loss.backward()
    assert (
        zs.clip.visual.conv1.weight.grad is not None and zs.clip.token_embedding.weight.grad is None
    )
    # no budget: x_adv == x and the model equals the reference, so the loss vanishes
    zero, _ = get("defenses", "fare").obj(eps=0, alpha=0, steps=1).loss(batch, ctx)
    assert float(zero.detach()) < 1e-8


def test_ft_standard_contrastive_loss_and_class_aware_targets():
    zs, ctx, batch = _setup(False, n=12)
    loss, _ = get("defenses", "ft-standard").obj().loss(batch, ctx)
    img = zs.encode_image(batch.images)
    txt = zs.encode_text(batch.captions)
    logits = zs.logit_scale() * img @ txt.t()
    eye = torch.arange(12)
    torch.testing.assert_close(
        loss, (F.cross_entropy(logits, eye) + F.cross_entropy(logits.t(), eye)) / 2
    )
    loss.backward()
    assert zs.clip.token_embedding.weight.grad is not None and zs.clip.logit_scale.grad is not None

    labels = torch.tensor([0, 0, 1, 2])
    feats = F.normalize(torch.randn(4, 8), dim=-1)
    aware = clip_contrastive_loss(feats, feats, torch.tensor(10.0), labels)
    logits = 10 * feats @ feats.t()
    targets = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    manual = (
        -(targets * logits.log_softmax(1)).sum(1).mean() / 2
        - (targets * logits.t().log_softmax(1)).sum(1).mean() / 2
    )
    torch.testing.assert_close(aware, manual)


def test_apgd_reaches_the_constrained_maximum_of_a_concave_loss():
    """max -||x - t||^2 over the eps ball and [0, 1]: the answer is t clipped to both."""
    from clipx_baselines.fare_attack import apgd_maximise

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 4, 4, generator=g) * 0.8 + 0.1
    t = x + 0.2 * torch.randn(x.shape, generator=g)
    eps = 8 / 255

    def loss(z):
        return -((z - t) ** 2).flatten(1).sum(1)

    torch.manual_seed(0)
    best = apgd_maximise(loss, x, eps, steps=50)
    expected = torch.clamp(torch.minimum(torch.maximum(t, x - eps), x + eps), 0, 1)
    assert (best - x).abs().max() <= eps + 1e-6 and best.min() >= 0 and best.max() <= 1
    torch.testing.assert_close(best, expected, atol=2e-3, rtol=0)


def test_fare_apgd_inner_attack_option():
    from clipx_baselines.fare_attack import EmbeddingAPGD, embedding_l2

    zs, ctx, batch = _setup(True)
    target = zs.encode_image(batch.images, normalize=False).detach()
    torch.manual_seed(0)
    x_adv = EmbeddingAPGD(zs, eps=4 / 255, steps=10)(batch.images, target)
    torch.manual_seed(0)
    x_rand = (batch.images + torch.empty_like(batch.images).uniform_(-4 / 255, 4 / 255)).clamp(0, 1)
    with torch.no_grad():
        d_adv = embedding_l2(zs.encode_image(x_adv, normalize=False), target).mean()
        d_rand = embedding_l2(zs.encode_image(x_rand, normalize=False), target).mean()
    assert (x_adv - batch.images).abs().max() <= 4 / 255 + 1e-6
    assert d_adv > 3 * d_rand
    fare = get("defenses", "fare").obj(eps="4/255", steps=5, inner_attack="apgd")
    assert fare.config()["inner_attack"] == "apgd"
    assert "inner_attack" not in get("defenses", "fare").obj().config()  # default: PGD
    torch.manual_seed(0)
    loss, _ = fare.loss(batch, ctx)
    assert float(loss.detach()) > 0
    with pytest.raises(ClipxUsageError, match="inner_attack"):
        get("defenses", "fare").obj(inner_attack="fgsm")
