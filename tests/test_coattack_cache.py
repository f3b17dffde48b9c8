"""Co-Attack retrieval results live in the engine's record store and are keyed like the engine's:
protocol settings plus the model-weights fingerprint."""

from __future__ import annotations

import json

from helpers import tiny_clip

from clip_robust_ext.api import get, model_fingerprint, result_path


def _protocol():
    return get("evaluators", "coattack-retrieval").obj(
        galleries={"source": "procedural", "n_galleries": 1, "gallery_size": 6, "n_captions": 2},
        eps=["1/255"],
        steps=1,
        modes=["clean", "image"],
    )


def test_retrieval_recomputes_for_another_checkpoint_under_the_same_label(tmp_path):
    proto = _protocol()
    first_model, other_model = tiny_clip(seed=0), tiny_clip(seed=1)
    first = proto.evaluate_with(first_model, tmp_path, "m")
    path = result_path(tmp_path, "m", proto.name, "retrieval")
    stored = json.loads(path.read_text())
    assert stored["records"] == json.loads(json.dumps(first))
    assert stored["protocol_key"].endswith(model_fingerprint(first_model.model))

    again = proto.evaluate_with(first_model, tmp_path, "m")  # same weights: served from the store
    assert again == stored["records"]

    other = proto.evaluate_with(other_model, tmp_path, "m")  # same label, other weights
    fresh = proto.evaluate_with(other_model, tmp_path / "fresh", "m")
    assert json.loads(path.read_text())["protocol_key"].endswith(
        model_fingerprint(other_model.model)
    )
    strip = lambda recs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in recs]  # noqa: E731
    assert strip(other) == strip(fresh)  # the other model's numbers, not the first one's
    assert strip(other) != strip(first)
