"""Robustness evaluation: protocols, the engine, result records and tables.

Protocols load without torch; the engine and tables load on first use."""

from __future__ import annotations

from ..utils.lazy import lazy_exports
from .protocols import Protocol, dataset_key, get_protocol, protocol_from_dict, protocol_names

_LAZY = {
    "evaluate": ".engine",
    "evaluate_model": ".engine",
    "build_classifier": ".engine",
    "open_eval_dataset": ".engine",
    "derive_seed": ".engine",
    "plan_attacks": ".engine",
    "attack_batch": ".engine",
    "protocol_samples": ".engine",
    "model_fingerprint": ".records",
    "resolve_templates": ".engine",
    "compare": ".paired",
    "Comparison": ".paired",
    "compare_models": ".pairing",
    "compare_all": ".pairing",
    "load_outcomes": ".outcomes",
    "FORMULAS": ".records",
    "SCHEMA": ".records",
    "load_records": ".records",
    "read_log": ".records",
    "result_path": ".records",
    "csv_table": ".tables",
    "markdown_table": ".tables",
    "plot_eps": ".tables",
    "table_rows": ".tables",
    "write_reports": ".tables",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "Comparison",
    "FORMULAS",
    "Protocol",
    "attack_batch",
    "model_fingerprint",
    "protocol_samples",
    "SCHEMA",
    "build_classifier",
    "open_eval_dataset",
    "compare",
    "compare_all",
    "compare_models",
    "csv_table",
    "dataset_key",
    "derive_seed",
    "evaluate",
    "evaluate_model",
    "get_protocol",
    "load_outcomes",
    "load_records",
    "markdown_table",
    "plan_attacks",
    "plot_eps",
    "protocol_from_dict",
    "protocol_names",
    "read_log",
    "resolve_templates",
    "result_path",
    "table_rows",
    "write_reports",
]
