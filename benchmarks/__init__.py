"""clipx benchmark suite: every figure is a ratio of two costs measured in the same process.

Run `python -m benchmarks.run` (full, ~15 min on 1 CPU core) or `python -m benchmarks.run --quick`
(CI, < 1 min). See benchmarks/README.md for what each figure means and how it is measured.
"""
