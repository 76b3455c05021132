"""Decoder LLMs: text generation with a key/value cache, exported once per family to both
built-in backends, held to transformers' own greedy tokens, and generated from torch-free.

Four families run in CI (Llama: grouped-query attention with rotary positions; GPT-2: an
`LMHeadModel` with learned positions; BLOOM: ALiBi, no position ids; Mistral: a sliding
window); the other families of `decoder_models.FAMILIES` are `slow`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import decoder_models
import numpy as np
import pytest
from conftest import assert_one_line_error, run_kiln

import modelkiln
from modelkiln.sampling import Sampling

CI_FAMILIES = ("llama", "gpt2", "bloom", "mistral")
SLOW_FAMILIES = tuple(f for f in decoder_models.FAMILIES if f not in CI_FAMILIES)
TARGETS = ("cpu", "openvino-cpu")


def _targets() -> list[str]:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return ["cpu"]
    return list(TARGETS)


def export_family(family: str, root: Path) -> dict[str, Path]:
    """The family's checkpoint exported to every target from one trace (task inferred)."""
    ckpt = decoder_models.build_decoder(family, root / f"{family}-ckpt")
    targets = _targets()
    args = [a for t in targets for a in ("--target", t)]
    result = run_kiln("export", ckpt, *args, "--name", family, "-o", root / "out", "--json")
    assert result.exit_code == 0, result.stderr
    return {"ckpt": ckpt} | {t: root / "out" / f"{family}-{t}" for t in targets}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("decoders")
    return {family: export_family(family, root / family) for family in CI_FAMILIES}


def manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "kiln.json").read_text())


def check_artifact(family: str, path: Path) -> None:
    """What every decoder artifact must be: the task inferred, our cache interface with the
    model's own KV heads, prefill + 3 decode steps at two shapes matching PyTorch, and 32
    greedy tokens equal to transformers' generate(); `kiln validate` replays them."""
    m = manifest(path)
    assert m["task"] == "text-generation"
    config = decoder_models.FAMILIES[family]()
    layers = config.num_hidden_layers
    names = list(m["inputs"])
    assert names[:2] == ["input_ids", "attention_mask"]
    cache = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert names[-2 * layers :] == cache
    assert list(m["outputs"]) == ["logits"] + [
        c.replace("past_key_values", "present") for c in cache
    ]
    assert m["inputs"]["attention_mask"]["shape"] == ["batch", "total_sequence"]
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    if family != "falcon":  # Falcon's own code keeps every head in its cache
        assert m["inputs"]["past_key_values.0.key"]["shape"][1] == heads
    assert m["inputs"]["past_key_values.0.key"]["shape"][2] == "past_sequence"
    validation = m["validation"]
    assert validation["passed"] is True, validation["failures"]
    steps = [c["dims"] for c in validation["checks"]]
    assert len(steps) == 8 and {d["batch"] for d in steps} == {1, 2}
    assert [d["past_sequence"] for d in steps[:4]] == [0, 9, 10, 11]  # prefill, then 3 steps
    generation = validation["generation"]
    assert generation["passed"] and generation["max_new_tokens"] == 32
    assert generation["prompts"] == 2 and generation["reference"].startswith("transformers")
    golden = json.loads((path / m["decoder"]["golden"]).read_text())
    lengths = [len(p) for p in golden["prompts"]]
    assert len(set(lengths)) == 2  # different lengths: one row is left-padded
    check = run_kiln("validate", path, "--json")
    assert check.exit_code == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["checks"]["generation"]["passed"] is True


@pytest.mark.parametrize("family", CI_FAMILIES)
def test_decoder_exports_and_generates_like_transformers(exported, family: str) -> None:
    for target in _targets():
        check_artifact(family, exported[family][target])


@pytest.mark.slow
@pytest.mark.parametrize("family", SLOW_FAMILIES)
def test_more_decoder_families(tmp_path: Path, family: str) -> None:
    paths = export_family(family, tmp_path)
    for target in _targets():
        check_artifact(family, paths[target])


def test_sliding_window_size_is_folded_into_the_graph(exported) -> None:
    m = manifest(exported["mistral"]["cpu"])
    assert not any("sliding" in name for name in [*m["inputs"], *m["outputs"]])


def test_model_without_position_ids_takes_none(exported) -> None:
    assert "position_ids" not in manifest(exported["bloom"]["cpu"])["inputs"]
    assert "position_ids" in manifest(exported["llama"]["cpu"])["inputs"]


# --------------------------------------------------------------------------- runtime


def golden(path: Path) -> dict[str, Any]:
    return json.loads((path / "generation.json").read_text())


def test_session_generate_reproduces_the_golden_tokens(exported) -> None:
    for target in _targets():
        path = exported["llama"][target]
        recorded = golden(path)
        session = modelkiln.load(path)
        streamed: list[np.ndarray] = []
        result = session.generate(
            recorded["prompts"], max_new_tokens=32, streamer=streamed.append, eos_token_id=[]
        )
        sequences = np.asarray(recorded["sequences"])
        width = sequences.shape[1]
        assert np.array_equal(result.sequences[:, :width], sequences)  # eos never stops it here
        assert len(streamed) == 32 and all(s.shape == (2,) for s in streamed)
        assert np.array_equal(np.stack(streamed, axis=1), result.new_tokens)


GENERATE_WITHOUT_TORCH = """
import json, sys
import modelkiln
session = modelkiln.load(sys.argv[1])
recorded = json.load(open(sys.argv[1] + "/generation.json"))
out = session.generate(recorded["prompts"], max_new_tokens=recorded["max_new_tokens"],
                       eos_token_id=recorded["eos_token_ids"])
print(json.dumps({"equal": out.sequences.tolist() == recorded["sequences"],
                  "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def test_generation_needs_neither_torch_nor_transformers(exported) -> None:
    for target in _targets():
        proc = subprocess.run(
            [sys.executable, "-c", GENERATE_WITHOUT_TORCH, str(exported["gpt2"][target])],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"equal": True, "heavy": []}


def test_sampling_is_seeded_and_top_k_1_is_greedy(exported) -> None:
    session = modelkiln.load(exported["llama"]["cpu"])
    prompts = golden(exported["llama"]["cpu"])["prompts"]

    def run(sampling: Sampling | None) -> np.ndarray:
        return session.generate(
            prompts, max_new_tokens=12, sampling=sampling, eos_token_id=[]
        ).new_tokens

    greedy = run(None)
    assert np.array_equal(run(Sampling(do_sample=True, top_k=1, seed=3)), greedy)
    hot = Sampling(do_sample=True, temperature=5.0, top_p=0.95, seed=7)
    assert np.array_equal(run(hot), run(hot))
    assert not np.array_equal(run(hot), greedy)  # at temperature 5 over 128 ids: differs
    penalized = run(Sampling(repetition_penalty=50.0))
    for row in penalized:  # a huge penalty: no token repeats within the new ones
        assert len(set(row.tolist())) == len(row)


def test_kiln_generate_streams_text_and_ids(exported) -> None:
    path = exported["llama"]["cpu"]
    as_json = run_kiln("generate", path, "w5 w9 w20", "--max-new-tokens", "6", "--json")
    assert as_json.exit_code == 0, as_json.stderr
    record = json.loads(as_json.stdout)
    assert record["prompt_ids"] == [5, 9, 20] and len(record["new_ids"]) <= 6
    text = run_kiln("generate", path, "w5 w9 w20", "--max-new-tokens", "6")
    assert text.exit_code == 0, text.stderr
    assert text.stdout.strip() == record["text"]
    assert "tokens/s" in text.stderr
    ids = run_kiln("generate", path, "--ids", "5,9,20", "--max-new-tokens", "6")
    assert ids.stdout.strip() == ",".join(map(str, record["new_ids"]))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--ids", "5,6", "--max-new-tokens", "300"], ["256 positions", "at most 255"]),
        (["--ids", "5,999"], ["token id 999", "vocabulary has 128 ids"]),
        (["--ids", "5", "--temperature", "0"], ["temperature"]),
        (["--ids", "5", "--top-p", "1.5"], ["top-p", "(0, 1]"]),
        (["--ids", "5", "--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["--ids", "5,x"], ["--ids"]),
        ([], ["PROMPT", "--ids"]),
    ],
    ids=[
        "beyond-positions",
        "id-outside-vocab",
        "temperature-0",
        "top-p",
        "no-new-tokens",
        "bad-ids",
        "no-prompt",
    ],  # fmt: skip
)
def test_bad_generate_requests_are_one_line(exported, args: list[str], mentions: list[str]) -> None:
    result = run_kiln("generate", exported["llama"]["cpu"], *args)
    assert_one_line_error(result, *mentions)


def test_generate_on_an_encoder_artifact_is_refused(tiny_bert_artifact) -> None:
    result = run_kiln("generate", tiny_bert_artifact.path, "--ids", "5")
    assert_one_line_error(result, "feature-extraction", "text-generation")


def test_text_generation_on_an_encoder_checkpoint_is_refused(tmp_path: Path, tiny_bert_dir) -> None:
    out = tmp_path / "out" / "x"
    result = run_kiln("export", tiny_bert_dir, "--task", "text-generation", "-o", out)
    assert_one_line_error(result, "text-generation", "causal language-model head", "BertModel")
    assert not (tmp_path / "out").exists()


def test_shape_ranges_for_decoders_are_refused_before_loading(exported, tmp_path: Path) -> None:
    target = tmp_path / "short.toml"
    target.write_text('backend = "onnxruntime"\n[shapes.sequence]\nmin = 1\nopt = 8\nmax = 16\n')
    out = tmp_path / "out" / "x"
    result = run_kiln("export", exported["llama"]["ckpt"], "--target", target, "-o", out)
    assert_one_line_error(result, "[shapes]", "text-generation")
    assert not (tmp_path / "out").exists()


EVAL_TEXTS = ["w5 w6 w7 w8", "w10 w20 w30", "w40 w41 w42 w43 w44 w45", "w100", "w3 w4 w99 w12 w77"]


@pytest.mark.parametrize("target", TARGETS)
def test_int4_weights_decoder_is_measured_on_the_decoder_task(
    exported, tmp_path: Path, target: str
) -> None:
    """Next-token top-1 agreement and greedy-token agreement with fp32 on evaluation prompts;
    its golden tokens are its own (they differ from fp32's by design), replayed by validate."""
    if target not in _targets():
        pytest.skip("openvino is not installed")
    data = tmp_path / "eval.txt"
    data.write_text("\n".join(EVAL_TEXTS) + "\n")
    out = tmp_path / "int4"
    result = run_kiln(
        "export", exported["llama"]["ckpt"], "--target", target, "--precision", "int4-weights",
        "--eval", data, "--min-top1-agreement", "0.3", "-o", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    m = manifest(out)
    accuracy = m["accuracy"]
    assert accuracy["metric"] == "top1_agreement" and accuracy["samples"] == len(EVAL_TEXTS)
    tokens = sum(len(t.split()) for t in EVAL_TEXTS)
    assert accuracy["decisions"] == tokens  # one next-token decision per prompt token
    assert 0.3 <= accuracy["top1_agreement"] <= 1.0
    greedy = accuracy["greedy"]
    assert greedy["new_tokens"] == 16 and 0.0 <= greedy["agreement"] <= 1.0
    assert accuracy["budget"]["min_top1_agreement"] == 0.3
    generation = m["validation"]["generation"]
    assert (
        generation["passed"] and "this artifact at build (int4-weights)" in generation["reference"]
    )
    assert json.loads((out / "generation.json").read_text())["reference"] == generation["reference"]
    assert run_kiln("validate", out).exit_code == 0
    assert m["backend"]["quantization"]["precision"] == "int4-weights"


# --------------------------------------------------------------------------- bench


def test_bench_measures_tokens_per_second_against_pytorch(exported) -> None:
    path, ckpt = exported["llama"]["cpu"], exported["llama"]["ckpt"]
    result = run_kiln(
        "bench", path, "--baseline", ckpt, "--batch", "1,2", "--seq", "12", "--new-tokens", "6",
        "--rounds", "2", "--json", "-",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "modelkiln.bench.generate/1"
    assert report["settings"]["prompt_tokens"] == 12 and report["settings"]["new_tokens"] == 6
    rows = {(r["subject"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {(s, b) for s in ("pytorch", str(path)) for b in (1, 2)}
    for row in rows.values():
        assert row["ttft_ms"]["p50"] > 0 and row["decode_tokens_per_s"]["p50"] > 0
        assert len(row["rounds"]["ttft_ms"]) == 2
    comparisons = {c["batch"]: c for c in report["comparisons"]}
    assert set(comparisons) == {1, 2}
    ours, theirs = rows[(str(path), 1)], rows[("pytorch", 1)]
    expected = ours["decode_tokens_per_s"]["p50"] / theirs["decode_tokens_per_s"]["p50"]
    assert comparisons[1]["decode_speedup"] == pytest.approx(expected, rel=1e-2)
    assert "decode vs PyTorch" in result.stderr  # the table, beside the JSON on stdout


def test_bench_refuses_mixing_decoders_with_other_artifacts(exported, tiny_bert_artifact) -> None:
    result = run_kiln("bench", exported["llama"]["cpu"], tiny_bert_artifact.path, "--rounds", "1")
    assert_one_line_error(result, "text-generation", "not both")
    result = run_kiln("bench", tiny_bert_artifact.path, "--new-tokens", "8", "--rounds", "1")
    assert_one_line_error(result, "--new-tokens", "text-generation")


def test_session_generate_takes_text_with_the_artifacts_tokenizer(exported) -> None:
    session = modelkiln.load(exported["llama"]["cpu"])
    result = session.generate(["w5 w9 w20", "w7"], max_new_tokens=5, eos_token_id=[])
    assert result.text is not None and len(result.text) == 2
    by_ids = session.generate([[5, 9, 20], [7]], max_new_tokens=5, eos_token_id=[])
    assert np.array_equal(result.sequences, by_ids.sequences)
    assert result.text[0] == " ".join(f"w{t}" for t in by_ids.new_tokens[0] if t > 2)
    assert by_ids.text is None
    single = session.generate("w5 w9 w20", max_new_tokens=5, eos_token_id=[])
    assert single.text == result.text[:1]


def test_openvino_decoders_keep_the_cache_in_the_model_state(exported) -> None:
    if "openvino-cpu" not in _targets():
        pytest.skip("openvino is not installed")
    session = modelkiln.load(exported["llama"]["openvino-cpu"])
    assert session.stateful is True
    names = {n for port in session._compiled.inputs for n in port.get_names()}
    assert names == {"input_ids", "attention_mask", "position_ids"}  # no cache inputs
    # Stateless runs still answer like the graph: a decode step from a given past.
    feeds, expected = next(
        (f, o)
        for f, o in _golden_samples(exported["llama"]["openvino-cpu"])
        if f["past_key_values.0.key"].shape[2] > 0
    )
    got = session.run(feeds)
    assert np.abs(got["logits"] - expected["logits"]).max() < 1e-4
    assert got["present.1.value"].shape == expected["present.1.value"].shape


def _golden_samples(path: Path) -> list[Any]:
    from modelkiln.golden import load_golden

    return load_golden(path / "golden.npz")


@pytest.mark.parametrize("target", TARGETS)
def test_session_generate_refuses_bad_prompts_in_one_line(exported, target: str) -> None:
    if target not in _targets():
        pytest.skip("openvino is not installed")
    session = modelkiln.load(exported["llama"][target])
    cases = [
        (([[5, 6, 500]],), "token id 500"),  # checked on every backend, OpenVINO's state too
        (([5, 6, 7],), "list of token-id lists"),
        (([[5.0, 6.5]],), "integers"),
        ((np.array([[5, 6, 0]]), np.array([[1, 1, 0]])), "padded on the left"),
        (([[5, 6], "w7"],), "not both"),
    ]
    for args, message in cases:
        with pytest.raises(modelkiln.UserInputError, match=message):
            session.generate(*args, max_new_tokens=2)


def test_a_mask_that_does_not_cover_past_and_new_tokens_is_a_feed_error(exported) -> None:
    session = modelkiln.load(exported["llama"]["cpu"])
    feeds, _ = next(
        (f, o)
        for f, o in _golden_samples(exported["llama"]["cpu"])
        if f["past_key_values.0.key"].shape[2] > 0
    )
    short = dict(feeds, attention_mask=feeds["attention_mask"][:, 1:])
    with pytest.raises(modelkiln.FeedError, match="covers both"):
        session.run(short)


def test_fresh_reference_run_on_a_decoder(exported) -> None:
    path, ckpt = exported["llama"]["cpu"], exported["llama"]["ckpt"]
    result = run_kiln("validate", path, "--reference", ckpt, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    checks = json.loads(result.stdout)["checks"]["reference"]["checks"]
    assert {c["dims"]["batch"] for c in checks} == {2, 4} and len(checks) == 8


def test_bench_refuses_what_does_not_fit_before_running(exported, tmp_path: Path) -> None:
    path = exported["llama"]["cpu"]
    result = run_kiln("bench", path, "--new-tokens", "300", "--rounds", "1")
    assert_one_line_error(result, "--new-tokens 300", "256 positions")
    pytest.importorskip("matplotlib")
    result = run_kiln("bench", path, "--plot", tmp_path / "p.png", "--rounds", "1")
    assert_one_line_error(result, "--plot", "text generation")


def test_golden_is_plain_greedy_whatever_the_generation_config(tmp_path: Path) -> None:
    """A checkpoint whose generation_config.json asks for a repetition penalty and no
    repeated n-grams: the golden still is plain greedy decoding, which the artifact replays."""
    ckpt = decoder_models.build_decoder("llama", tmp_path / "ckpt")
    config = json.loads((ckpt / "generation_config.json").read_text())
    config |= {"repetition_penalty": 3.0, "no_repeat_ngram_size": 2}
    (ckpt / "generation_config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    result = run_kiln("export", ckpt, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    assert manifest(out)["validation"]["generation"]["passed"] is True
