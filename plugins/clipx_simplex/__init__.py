"""AdvSimplex (Dong et al., "Improving Zero-Shot Adversarial Robustness in Vision-Language Models
by Closed-form Alignment of Adversarial Path Simplices", ICML 2025). The paper has no public code;
everything it leaves open is a named option below, with the default in brackets.

Method. PGD from the clean image x keeps its vertices x+delta_0 ... x+delta_T; consecutive
vertices and x span the triangles S_i = conv{x, x+delta_i, x+delta_i+1}. The defense minimises
    adv_weight * CE(p_theta(x+delta_T), y)  +  weight * reduce_i mean_batch E_{u~U(S_i)} D(x+u)
where E_{u~U(S_i)} D is computed in closed form from the second-order Taylor expansion of D at
the clean sample (expectation.py has the derivation): for vertices 0, a, b,
    E[D] ~= D(x) + J^T (a+b)/3 + 1/24 [a^T H a + b^T H b + (a+b)^T H (a+b)],
with Hessian-vector products by batched double backward (the Hessian is never formed), so the
term is differentiable w.r.t. the model and is trained through. With D = KL(p_ref(x) || p(x+u))
and the *current* model as reference, D(x) = 0 and J = 0 at x (KL minimum): only the second-order
term is left. With the frozen reference both are non-zero once training moves the model.

Options of the "advsimplex" defense (recipe keys under [defense]) [default]:
  eps ["1/255"], alpha ["1/255"], steps [3]   trajectory PGD-T, TeCoA-lineage budget (TeCoA
                                               trains PGD-2; 3 steps give 3 triangles, not 2)
  random_start [true]         uniform start in the eps-ball as torchattacks/TeCoA; false makes
                              delta_0 = 0 and S_0 a segment (still handled exactly)
  weight [1.0]                weight of the simplex term (no published value; 1 as PMG-AFT's KLs)
  adv_weight [1.0]            weight of TeCoA's CE on the last vertex (0 = simplex term alone)
  divergence ["kl"]           "kl": KL(p_ref(x) || p_theta(x+u)) on zero-shot softmax;
                              "l2-logits": squared L2 of logits; "l2-embedding": FARE's squared
                              L2 of un-normalised image embeddings
  reference ["frozen"]        clean scores from the frozen starting model ("frozen") or from the
                              current model without gradient ("current")
  estimator ["closed-form"]   "closed-form" or "mc" (Monte Carlo, mc_samples points per triangle,
                              Dirichlet(1,1,1)); mc is the reference the closed form replaces
  derivatives ["auto"]        "autograd" (exact J, H-vector products by double backward) or
                              "finite-difference" (forward-only central differences at x +- h v,
                              exact for quadratic D; cheaper training backward); "auto" picks
                              finite differences when the image tower has ReLU-family units
                              (ResNets: the J / H terms at one point are then discontinuous in
                              the weights and training through autograd's collapsed; docs/methods.md) and
                              autograd otherwise (ViTs, GELU)
  fd_step [1.0]               h for finite differences, in units of the trajectory offsets
  mc_samples [8]              points per triangle for estimator "mc"
  reduction ["mean"]          over triangles: "mean" or "sum" (always mean over the batch)
  trainable ["visual"]; optimiser SGD momentum 0.9, lr 1e-5, no weight decay (TeCoA's).
No upper-bound variant: the second-order model is not a bound on D (the remainder has no sign),
and norm bounds (|J^T v| <= |J||v|, v^T H v <= lambda_max |v|^2) need lambda_max(H), which power
iteration only under-estimates; we could not justify one, so none is offered.

Accuracy of the closed form (tests/test_simplex*.py): exact (to 1e-10) for a loss that is
quadratic in the input; on CLIPs the gap to the Monte-Carlo expectation is the Taylor remainder,
O(eps) relative. It is small for a random-init clipx-tiny (<2% at 1/255) but large for the
trained, non-robust clipx-small-c10: the closed form underestimates E[D] by ~20% at 1/255 and
~50% at 4/255 (summed over triangles), so it is a cheap surrogate, not a precise expectation.

Cost (PGD-T, batch N, per step; images through the vision tower counted by bench.py). TeCoA:
T forward + T input-backward (attack), 1 forward + 1 backward: (T+1)N images. AdvSimplex adds
1 reference forward (no grad) and, for the closed form, one forward on (T+1)N replicated images,
one backward with create_graph, one double backward (the T+1 Hessian-vector products) and the
parameter backward through both (third-order autograd): (2T+3)N images (N of them through the
frozen reference), about 2x TeCoA's forwards,
but measured 5.4x TeCoA's step time (procedural-small, N=16, T=3, CPU). "finite-difference"
replaces the derivative passes by (4T+3)N forwards and an ordinary backward (3.2x TeCoA).
Monte Carlo with 100 points per triangle costs 9x the closed form (value + parameter backward).
Reproduce: python -m clipx_simplex.bench
"""

from clip_robust_ext import hookimpl
from clip_robust_ext.api import lazy_exports

# re-exports load on first use (they import torch): loading the plugin stays cheap
_EXPORTS = {
    "AdvSimplex": ".defense",
    **dict.fromkeys(["DIVERGENCES", "get_divergence"], ".divergence"),
    **dict.fromkeys(["MonteCarlo", "SimplexTerms", "closed_form", "monte_carlo"], ".expectation"),
    **dict.fromkeys(["sample_barycentric", "triangle_mean", "triangle_second_moment"], ".geometry"),
    **dict.fromkeys(["TrajectoryPGD", "pgd_trajectory"], ".trajectory"),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "DIVERGENCES",
    "AdvSimplex",
    "MonteCarlo",
    "SimplexTerms",
    "TrajectoryPGD",
    "closed_form",
    "get_divergence",
    "monte_carlo",
    "pgd_trajectory",
    "sample_barycentric",
    "triangle_mean",
    "triangle_second_moment",
]


@hookimpl
def register_defenses(register):
    from clip_robust_ext.api import checked

    from .defense import AdvSimplex

    build = checked(AdvSimplex, "defense 'advsimplex'")  # recipes check keys by it
    register("advsimplex", build, description=AdvSimplex.__doc__.strip().splitlines()[0])
