"""Accuracy measures of reduced-precision artifacts (`modelkiln.exporter.accuracy`)."""

from __future__ import annotations

import numpy as np
import pytest

from modelkiln.errors import UserInputError
from modelkiln.exporter.accuracy import measure, pooled
from modelkiln.manifest import Accuracy
from modelkiln.precision.budget import Budget

RNG = np.random.default_rng(0)


def hidden(batch: int, seq: int) -> np.ndarray:
    return RNG.standard_normal((batch, seq, 8)).astype(np.float32)


def test_pooling_respects_the_attention_mask() -> None:
    value = np.zeros((1, 3, 2), np.float32)
    value[0, 0] = [1, 0]
    value[0, 1] = [3, 0]
    value[0, 2] = [100, 100]  # padding: must not count
    mask = np.array([[1, 1, 0]], np.int64)
    got = pooled({"h": value}, {"attention_mask": mask}, ["h"])
    np.testing.assert_allclose(got, [[2.0, 0.0]])


def test_embedding_cosine_names_the_worst_sentence() -> None:
    names = ["a long sentence", "Ok.", "another one"]
    feeds = [{"attention_mask": np.ones((1, n), np.int64)} for n in (7, 2, 5)]
    ref = [{"h": hidden(1, f["attention_mask"].shape[1])} for f in feeds]
    cand = [{"h": r["h"].copy()} for r in ref]
    cand[1]["h"] = cand[1]["h"] + 2.0 * RNG.standard_normal(cand[1]["h"].shape).astype(np.float32)
    report = measure("feature-extraction", ["h"], names, feeds, ref, cand)
    assert report["metric"] == "cosine" and report["samples"] == 3
    assert report["worst"][0]["name"] == "Ok."
    assert report["cosine"]["min"] == report["worst"][0]["cosine"] < 0.99
    assert report["cosine"]["mean"] > report["cosine"]["min"]
    assert report["max_abs_diff"] > 1.0
    assert "Ok." in Accuracy.from_json(report).headline()


def test_identical_outputs_have_cosine_one_and_no_diff() -> None:
    feeds = [{"attention_mask": np.ones((1, 4), np.int64)}]
    ref = [{"h": hidden(1, 4)}]
    report = measure("feature-extraction", ["h"], ["x"], feeds, ref, ref)
    assert report["cosine"]["min"] == pytest.approx(1.0)
    assert report["max_abs_diff"] == 0.0


def test_nan_output_fails_any_cosine_budget() -> None:
    feeds = [{"attention_mask": np.ones((1, 4), np.int64)}]
    ref = [{"h": hidden(1, 4)}]
    bad = [{"h": np.full_like(ref[0]["h"], np.nan)}]
    report = measure("feature-extraction", ["h"], ["x"], feeds, ref, bad)
    assert report["cosine"]["min"] == -1.0
    assert Budget(min_cosine=0.5).check(report)


def test_classifier_top1_agreement() -> None:
    ref = [{"logits": np.array([[0.1, 0.9]], np.float32)} for _ in range(4)]
    cand = [{"logits": np.array([[0.2, 0.8]], np.float32)} for _ in range(3)]
    cand.append({"logits": np.array([[0.9, 0.1]], np.float32)})  # flipped decision
    names = ["a", "b", "c", "d"]
    report = measure("text-classification", ["logits"], names, [{}] * 4, ref, cand)
    assert report["top1_agreement"] == 0.75
    assert report["worst"] == [{"name": "d", "agreement": 0.0}]
    assert Budget(min_top1_agreement=0.7).check(report) == []
    assert Budget(min_top1_agreement=0.8).check(report) == ["top-1 agreement 0.7500 < 0.8"]


def test_token_classifier_counts_real_tokens_only() -> None:
    ref = np.zeros((1, 4, 3), np.float32)
    ref[..., 0] = 1.0
    cand = ref.copy()
    cand[0, 3] = [0, 0, 1]  # differs only on a padding token
    mask = np.array([[1, 1, 1, 0]], np.int64)
    report = measure(
        "token-classification", ["logits"], ["s"], [{"attention_mask": mask}], [{"logits": ref}],
        [{"logits": cand}],
    )  # fmt: skip
    assert report["top1_agreement"] == 1.0 and report["decisions"] == 3


def test_budget_messages_and_bounds() -> None:
    report = {"task": "feature-extraction", "cosine": {"min": 0.976, "mean": 0.99}}
    assert Budget(min_cosine=0.99).check(report) == ["min cosine 0.9760 < 0.99"]
    assert Budget(min_cosine=0.97).check(report) == []
    assert Budget().empty and not Budget(min_cosine=0.9).empty
    with pytest.raises(UserInputError, match=r"min_cosine must be a number in \(0, 1\], got 1.5"):
        Budget(min_cosine=1.5)


def test_top1_budget_is_refused_for_an_embedding_model() -> None:
    with pytest.raises(UserInputError, match="applies to classifiers"):
        Budget(min_top1_agreement=0.99).fits("feature-extraction")
    Budget(min_cosine=0.99).fits("feature-extraction")
