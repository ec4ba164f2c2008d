from __future__ import annotations

import pytest

from rankstack.errors import BadInput
from rankstack.records import Run
from rankstack.pipeline.fusion import interpolate, rrf


def test_rrf_by_hand():
    a = Run(scores={"q": {"x": 3.0, "y": 2.0, "z": 1.0}})
    b = Run(scores={"q": {"z": 0.9, "x": 0.5}})
    fused = rrf([a, b], rrf_k=60).scores["q"]
    assert fused["x"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["y"] == pytest.approx(1 / 62)
    assert fused["z"] == pytest.approx(1 / 63 + 1 / 61)
    assert [d for d, _ in rrf([a, b]).ranked("q")] == ["x", "z", "y"]
    assert rrf([a, b], rrf_k=0).scores["q"]["x"] == pytest.approx(1 / 1 + 1 / 2)
    assert set(rrf([a, b], depth=1).scores["q"]) == {"x", "z"}  # only each run's top 1
    with pytest.raises(BadInput, match="rrf_k"):
        rrf([a], rrf_k=-1)


def test_interpolation_by_hand():
    a = Run(scores={"q": {"x": 10.0, "y": 5.0, "z": 0.0}})
    b = Run(scores={"q": {"y": 2.0, "w": 1.0}})
    f = interpolate(a, b, alpha=0.25).scores["q"]
    assert f["x"] == pytest.approx(0.25 * 1.0 + 0.75 * 0.0)
    assert f["y"] == pytest.approx(0.25 * 0.5 + 0.75 * 1.0)
    assert f["w"] == pytest.approx(0.0)
    assert f["z"] == pytest.approx(0.0)
    assert interpolate(a, b, alpha=1.0).ranked("q")[0][0] == "x"
    with pytest.raises(BadInput, match="alpha"):
        interpolate(a, b, alpha=1.5)


def test_fusion_does_not_mutate_inputs():
    a = Run(scores={"q": {"x": 1.0}})
    before = a.to_dict()
    rrf([a, a])
    interpolate(a, a)
    assert a.to_dict() == before
