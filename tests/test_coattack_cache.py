"""Co-Attack retrieval results live in the engine's record store and are keyed like the engine's:
protocol settings, the code of the plugins that compute them and the model-weights fingerprint."""

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


def test_retrieval_recomputes_when_the_computing_plugin_code_changes(tmp_path, monkeypatch):
    """A changed protocol or retrieval-attack plugin (e.g. an edited SGA) must not be served the
    numbers its previous code computed."""
    import clip_robust_ext.cachekeys as cachekeys

    proto = _protocol()
    model = tiny_clip(seed=0)
    proto.evaluate_with(model, tmp_path, "m")
    path = result_path(tmp_path, "m", proto.name, "retrieval")
    before = json.loads(path.read_text())
    assert proto.evaluate_with(model, tmp_path, "m") == before["records"]  # unchanged: reused

    real = cachekeys.code_fingerprint
    monkeypatch.setattr(cachekeys, "code_fingerprint", lambda obj: "edited-" + real(obj))
    proto.evaluate_with(model, tmp_path, "m")
    after = json.loads(path.read_text())
    assert after["protocol_key"] != before["protocol_key"]
    assert after["records"][0]["elapsed_s"] != before["records"][0]["elapsed_s"]  # recomputed
