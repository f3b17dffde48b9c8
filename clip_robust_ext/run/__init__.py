"""Running clipx: what `clipx recipe run` and `clipx eval` execute, one module per job.

Two floors (docs: ARCHITECTURE.md, "Layers"); this package imports nothing itself, so a lower
module can use a lower room without loading the stages:
    layout, lock, builders, records   components, below recipes (the plugin API re-exports them)
    stages, evaluate                  the recipe stages and the single-model evaluation path
"""
