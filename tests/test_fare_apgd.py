"""FARE's inner APGD: the paper's (`inner_attack = "apgd"`) and the training code's
(`"apgd-reference"`), each checked on a one-pixel toy loss whose iterates are worked out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

C = 0.53  # the toy loss -(z - C)^2 peaks inside the box [0.4, 0.6] around x = 0.5 (eps 0.1)

# apgd_train at n = 10 (checks after iterations 2, 3, ..., 10, windows 2, 1, 1, ...), by hand:
# step 2 eps = 0.2; z_k = P(a_k + s sign g), a_{k+1} = P(a_k + a (z_k - a_k) + (1 - a)(a_k - a_{k-1}))
# with a = 1 at the first iteration and 0.75 after; P clips to [0.4, 0.6].
#  it 1: 0.5 + 0.2 -> 0.6                      loss -0.0049
#  it 2: 0.6 + .75(0.4 - 0.6) + .25(0.1) = 0.475  loss -0.003025; check (window 2): rises
#        0.475 vs 0.6 yes, 0.6 vs the buffer's 0 no -> 1 <= 1.5: halve (s 0.1), back to best x=0.5
#  it 3: 0.5 + .75(0.1) + .25(0.5 - 0.6) = 0.55  best; check: rose -> keep
#  it 4: 0.55 + .75(-0.1) + .25(0.05) = 0.4875    fell -> halve (s 0.05), back to 0.55
#  it 5: 0.55 + .75(-0.05) + 0 = 0.5125           best; rose, keep
#  it 6: 0.5125 + .75(0.05) + .25(-0.0375) = 0.540625  best; rose; not halved last check and
#        the best improved -> keep
#  it 7: 0.540625 + .75(-0.05) + .25(0.028125) = 0.51015625  fell -> halve (s 0.025), to 0.540625
#  it 8: 0.540625 + .75(-0.025) + 0 = 0.521875    best; rose -> keep
#  it 9: 0.521875 + .75(0.025) + .25(-0.01875) = 0.5359375  best; rose -> keep
#  it 10: 0.5359375 + .75(-0.025) + .25(0.0140625) = 0.520703125  (no gradient taken)
REFERENCE_POINTS = [0.5, 0.6, 0.475, 0.55, 0.4875, 0.5125, 0.540625, 0.51015625, 0.521875,
                    0.5359375, 0.520703125]  # fmt: skip


def _toy(threshold: float):
    """One pixel; loss -(z - C)^2; scores [z, threshold] (argmax 0 iff z > threshold)."""
    seen: list[float] = []

    def fn(z):
        seen.append(float(z.detach().flatten()[0]))
        scores = torch.stack(
            [z.flatten(1)[:, 0], torch.full_like(z.flatten(1)[:, 0], threshold)], 1
        )
        return -((z - C) ** 2).flatten(1).sum(1), scores

    return fn, seen


def test_reference_apgd_iterates_and_schedule_match_the_hand_trace():
    from clipx_baselines.apgd_reference import apgd_reference

    x = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    fn, seen = _toy(threshold=2.0)  # the argmax is always 1 != label 0: every iterate counts
    out = apgd_reference(fn, x, torch.tensor([0]), eps=0.1, steps=10)
    assert seen == pytest.approx(REFERENCE_POINTS, abs=1e-12)  # no random start: x first
    assert float(out) == pytest.approx(0.520703125, abs=1e-12)  # the last iterate, not the best


def test_reference_apgd_returns_the_last_iterate_whose_argmax_is_not_the_label():
    from clipx_baselines.apgd_reference import apgd_reference

    x = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    fn, _ = _toy(threshold=0.52)  # label 0 "correct" while z > 0.52
    out = apgd_reference(fn, x, torch.tensor([0]), eps=0.1, steps=10)
    assert float(out) == pytest.approx(0.51015625, abs=1e-12)  # iteration 7, the last z < 0.52
    fn, _ = _toy(threshold=-1.0)  # always "correct": the clean image comes back
    assert float(apgd_reference(fn, x, torch.tensor([0]), eps=0.1, steps=10)) == 0.5


def _falling_loss(seen):
    """Value -sum(z) (falls as z rises) but gradient +1: every step lowers the loss, so APGD
    halves its step and restarts from the clean point at every checkpoint."""

    def loss(z):
        seen.append(z.detach().clone())
        return -z.detach().flatten(1).sum(1) + (z - z.detach()).flatten(1).sum(1)

    return loss


def test_paper_apgd_restarts_at_the_papers_checkpoints():
    """Croce & Hein's checkpoints at n = 10: ceil(10 p_j) for p = 0.22, 0.41, 0.57, 0.70, 0.80,
    0.87, 0.93, 0.99: after iterations 3, 5, 6, 7, 8, 9, 10. clipx's apgd_maximise evaluates the
    restart point (here the clean x) right after each check."""
    from clipx_baselines.fare_attack import apgd_maximise

    x = torch.full((1, 1, 2, 2), 0.5)
    seen: list[torch.Tensor] = []
    apgd_maximise(_falling_loss(seen), x, eps=0.25, steps=10, random_start=False)
    iteration, restarts = 0, []
    for z in seen[1:]:
        if torch.equal(z, x):
            restarts.append(iteration)
        else:
            iteration += 1
    assert restarts == [3, 5, 6, 7, 8, 9, 10]


def test_fare_apgd_reference_attacks_the_normalised_embedding_against_the_raw_target():
    """The defense's training loss equals the one at the point apgd_reference finds for the loss
    written here (normalised embedding vs un-normalised frozen target, scores = the normalised
    embedding, labels = the batch's), and differs from attacking the un-normalised embedding."""
    from clipx_baselines.apgd_reference import apgd_reference
    from test_baselines import _setup

    from clip_robust_ext.registry import get

    zs, ctx, batch = _setup(True)
    with torch.no_grad():
        target = ctx.reference.encode_image(batch.images, normalize=False)

    def normalised(z):
        emb = F.normalize(zs.encode_image(z, normalize=False), dim=-1)
        return ((emb - target) ** 2).sum(1), emb

    def raw(z):
        emb = zs.encode_image(z, normalize=False)
        return ((emb - target) ** 2).sum(1), emb

    def training_loss(x_adv):
        with torch.no_grad():
            return ((zs.encode_image(x_adv, normalize=False) - target) ** 2).sum(1).mean()

    zs.eval()
    expected = apgd_reference(normalised, batch.images, batch.labels, eps=4 / 255, steps=10)
    other = apgd_reference(raw, batch.images, batch.labels, eps=4 / 255, steps=10)
    zs.train()
    fare = get("defenses", "fare").obj(eps="4/255", steps=10, inner_attack="apgd-reference")
    loss, _ = fare.loss(batch, ctx)
    assert float(loss.detach()) == pytest.approx(float(training_loss(expected)), rel=1e-5)
    assert float(loss.detach()) != pytest.approx(float(training_loss(other)), rel=1e-3)
