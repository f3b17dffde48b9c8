"""SGA, the Set-level Guidance Attack (Lu, Wang, Hu, Lu, ICCV 2023) on CLIP image-text retrieval.

Registered as attack "sga" of modality "retrieval": a mode of the `coattack-retrieval` protocol
(modes = [..., "sga"]), next to Co-Attack, on the same galleries and text-attack settings.
Fidelity to the authors' code (github.com/Zoky-2020/SGA): docs/FIDELITY.md#sga."""

from __future__ import annotations

from clip_robust_ext.api import hookimpl

# the hook imports the torch-heavy submodule: loading the plugin stays cheap (`clipx --help`)


@hookimpl
def register_attacks(register):
    from .attack import SGA

    register(
        "sga",
        SGA,
        modality="retrieval",
        description="Set-level Guidance Attack: image-guided captions, multi-scale image PGD away from the caption set",
    )
