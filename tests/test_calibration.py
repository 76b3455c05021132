"""Calibration and evaluation data: loading texts and arrays against a model's inputs, splitting.

Text tests use the tiny BERT's own config and tokenizer (tests/models.py) without its weights,
so no model is built; the expected token ids are read off the tokenizer's vocabulary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest
from rich.console import Console

from modelkiln.compare import Tolerance
from modelkiln.errors import UserInputError
from modelkiln.exporter import calibration, specs
from modelkiln.exporter.calibration import CalibrationDataError, load_samples, load_split
from modelkiln.exporter.data_samples import DataSample as Sample
from modelkiln.exporter.data_split import sample_key, split
from modelkiln.generated_feeds import InputDecl
from modelkiln.progress import Progress, iter_with_progress

BERT_ARGS = {"input_ids", "attention_mask", "token_type_ids"}
CLS, SEP = 2, 3
VOCAB = {token: i for i, token in enumerate(models.TOKENIZER_VOCAB)}
TEXTS = [
    "the cat sat",
    "hello world",
    "the dog sat on the mat , the cat sat on the kiln !",
    "fire",
    "hello kiln world .",
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return models.write_tiny_bert_preprocessing(tmp_path_factory.mktemp("calib") / "bert")


@pytest.fixture(scope="module")
def text_spec(bert_dir) -> specs.TaskSpec:
    return specs.for_hf(text_spec_config(bert_dir), "feature-extraction", BERT_ARGS)


@pytest.fixture(scope="module")
def vit_spec() -> specs.TaskSpec:
    config = {"model_type": "vit", "image_size": models.IMAGE_SIZE, "num_channels": 3}
    return specs.for_hf(config, "image-classification", {"pixel_values"})


@pytest.fixture(scope="module")
def mlp_spec() -> specs.TaskSpec:
    import onnx_ir as ir

    return specs.for_onnx(ir.from_proto(models.mlp_proto()))


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def text_spec_config(bert_dir: Path) -> dict:
    return json.loads((bert_dir / "config.json").read_text())


def ids_of(text: str) -> list[int]:
    return [CLS, *(VOCAB[w] for w in text.split()), SEP]


def text_samples(n: int, prefix: str = "") -> list[Sample]:
    """Distinct samples without a tokenizer: their content is what split() compares."""
    return [
        Sample(f"{prefix}{i}", {"x": np.full((1, 2 + i % 5), i, dtype=np.int64)}) for i in range(n)
    ]


def assert_one_line(exc: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(exc.value)
    assert isinstance(exc.value, UserInputError) and exc.value.exit_code == 2
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------- texts


def test_txt_samples_keep_their_own_length(tmp_path, bert_dir, text_spec):
    path = write(tmp_path / "calib.txt", [TEXTS[0], "", "   ", *TEXTS[1:]])
    samples = load_samples(path, text_spec, bert_dir)
    assert [s.name for s in samples] == TEXTS  # blank lines skipped, order kept
    lengths = [s.feeds["input_ids"].shape for s in samples]
    assert lengths == [(1, len(ids_of(t))) for t in TEXTS]
    assert len(set(lengths)) == len(TEXTS)  # varied, not padded to the longest
    for text, sample in zip(TEXTS, samples, strict=True):
        assert list(sample.feeds) == ["input_ids", "attention_mask", "token_type_ids"]
        assert all(v.dtype == np.int64 for v in sample.feeds.values())
        assert sample.feeds["input_ids"][0].tolist() == ids_of(text)
        assert (sample.feeds["attention_mask"] == 1).all()  # no padding anywhere
        assert (sample.feeds["token_type_ids"] == 0).all()


def test_txt_utf8_bom_and_crlf(tmp_path, bert_dir, text_spec):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffthe cat\r\nhello world\r\n".encode())
    samples = load_samples(path, text_spec, bert_dir)
    assert [s.feeds["input_ids"][0].tolist() for s in samples] == [
        ids_of("the cat"),
        ids_of("hello world"),
    ]


def test_jsonl_texts_and_pairs(tmp_path, bert_dir, text_spec):
    lines = [
        json.dumps({"text": "the cat sat", "label": 1}),
        "",
        json.dumps({"text": "hello", "text_pair": "the world !"}),
    ]
    samples = load_samples(write(tmp_path / "calib.jsonl", lines), text_spec, bert_dir)
    assert [s.name for s in samples] == ["the cat sat", "hello | the world !"]
    pair = samples[1].feeds
    assert pair["input_ids"][0].tolist() == [CLS, VOCAB["hello"], SEP] + ids_of("the world !")[1:]
    assert pair["token_type_ids"][0].tolist() == [0, 0, 0, 1, 1, 1, 1]


def test_long_names_are_shortened(tmp_path, bert_dir, text_spec):
    text = " ".join(["hello world"] * 20)
    (sample,) = load_samples(write(tmp_path / "long.txt", [text]), text_spec, bert_dir)
    assert sample.name.endswith("…") and len(sample.name) <= 60
    assert text.startswith(sample.name[:-1])


def test_only_the_spec_inputs_are_kept(tmp_path, bert_dir, text_spec):
    spec = specs.for_hf(text_spec_config(bert_dir), "feature-extraction", {"input_ids"})
    (sample,) = load_samples(write(tmp_path / "c.txt", ["the cat"]), spec, bert_dir)
    assert list(sample.feeds) == ["input_ids"]


def test_inputs_the_tokenizer_lacks_are_filled_only_when_zeros_or_mask(tmp_path, text_spec):
    folder = models.write_tiny_bert_preprocessing(tmp_path / "tok", ["input_ids"])
    path = write(tmp_path / "c.txt", ["the cat sat on the mat", "fire"])
    samples = load_samples(path, text_spec, folder)
    for sample in samples:
        shape = sample.feeds["input_ids"].shape
        assert sample.feeds["token_type_ids"].shape == shape
        assert (sample.feeds["token_type_ids"] == 0).all()
        assert (sample.feeds["attention_mask"] == 1).all()
        assert sample.feeds["attention_mask"].dtype == np.int64
    positions = InputDecl("position_ids", "int64", ("batch", "sequence"), "ints", 0, 128)
    spec = dataclasses.replace(text_spec, inputs=(*text_spec.inputs, positions))
    with pytest.raises(CalibrationDataError) as exc:
        load_samples(path, spec, folder)
    assert_one_line(exc, "--calibration", str(path), "'position_ids'", "produces input_ids")


def test_texts_are_truncated_to_the_model_limit_and_max_length(tmp_path, bert_dir, text_spec):
    path = write(tmp_path / "long.txt", [" ".join(["cat"] * 300), "the cat"])
    long, short = load_samples(path, text_spec, bert_dir)
    assert long.feeds["input_ids"].shape == (1, 128)  # max_position_embeddings
    assert long.feeds["input_ids"][0, -1] == SEP
    assert short.feeds["input_ids"].shape == (1, 4)
    capped = load_samples(path, text_spec, bert_dir, max_length=10)
    assert [s.feeds["input_ids"].shape[1] for s in capped] == [10, 4]
    assert load_samples(path, text_spec, bert_dir, max_length=1000)[0].feeds["input_ids"].shape == (
        1,
        128,
    )


def test_texts_for_an_image_model_are_refused(tmp_path, bert_dir, vit_spec, mlp_spec):
    path = write(tmp_path / "calib.txt", TEXTS)
    with pytest.raises(CalibrationDataError) as exc:
        load_samples(path, vit_spec, bert_dir)
    assert_one_line(
        exc, "--calibration", str(path), "holds texts", "pixel_values (float32 [batch,3,32,32])"
    )
    assert ".npz" in str(exc.value)
    with pytest.raises(CalibrationDataError) as exc:
        load_samples(path, mlp_spec, None, what="--eval")
    assert_one_line(exc, "--eval", "x (float32 [batch,16])")


def test_texts_without_a_tokenizer_are_refused(tmp_path, text_spec):
    path = write(tmp_path / "calib.txt", TEXTS)
    with pytest.raises(CalibrationDataError) as exc:
        load_samples(path, text_spec, None)
    assert_one_line(exc, str(path), "no tokenizer files")
    # transformers would build a special-tokens-only tokenizer from config.json alone.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 100}))
    with pytest.raises(CalibrationDataError) as exc:
        load_samples(path, text_spec, bare)
    assert_one_line(exc, str(bare), "no tokenizer files", "tokenizer.json")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, bert_dir, text_spec):
    config = {**text_spec_config(bert_dir), "vocab_size": 60}
    spec = specs.for_hf(config, "feature-extraction", BERT_ARGS)
    path = write(tmp_path / "c.txt", ["the cat", "kiln fire"])
    with pytest.raises(CalibrationDataError) as exc:
        load_samples(path, spec, bert_dir)
    assert_one_line(
        exc, f"token id {VOCAB['fire']} for 'kiln fire'", "60 entries", "does not belong"
    )


# --------------------------------------------------------------------------- npz


def test_npz_text_arrays(tmp_path, text_spec):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, size=(3, 7)).astype(np.int32)  # int32 ids widen exactly
    mask = np.ones((3, 7), dtype=np.int64)
    mask[2, 4:] = 0
    path = tmp_path / "calib.npz"
    np.savez(path, input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(mask))
    samples = load_samples(path, text_spec, None)
    assert [s.name for s in samples] == ["calib.npz[0]", "calib.npz[1]", "calib.npz[2]"]
    for i, sample in enumerate(samples):
        assert list(sample.feeds) == ["input_ids", "attention_mask", "token_type_ids"]
        assert sample.feeds["input_ids"].dtype == np.int64
        assert sample.feeds["input_ids"].shape == (1, 7)
        np.testing.assert_array_equal(sample.feeds["input_ids"][0], ids[i])
        np.testing.assert_array_equal(sample.feeds["attention_mask"][0], mask[i])


def test_npz_image_arrays(tmp_path, vit_spec):
    pixels = np.random.default_rng(1).standard_normal((4, 3, 32, 32))  # float64
    path = tmp_path / "images.npz"
    np.savez_compressed(path, pixel_values=pixels)
    samples = load_samples(path, vit_spec, None)
    assert len(samples) == 4
    assert all(s.feeds["pixel_values"].shape == (1, 3, 32, 32) for s in samples)
    assert all(s.feeds["pixel_values"].dtype == np.float32 for s in samples)
    np.testing.assert_allclose(samples[3].feeds["pixel_values"][0], pixels[3], rtol=1e-6)


def test_npz_names_must_match_the_inputs(tmp_path, text_spec):
    path = tmp_path / "calib.npz"
    ids = np.ones((2, 5), dtype=np.int64)
    np.savez(path, input_ids=ids, attention_mask=ids, ids=ids, labels=ids[:, 0])
    with pytest.raises(CalibrationDataError) as exc:
        load_samples(path, text_spec, None)
    message = assert_one_line(
        exc, "--calibration", str(path), "missing token_type_ids", "unexpected ids, labels"
    )
    assert "samples along the first axis" in message


@pytest.mark.parametrize(
    ("arrays", "parts"),
    [
        (
            {"pixel_values": np.zeros((2, 3, 32, 32), dtype=np.int64)},
            ["is int64 but the model takes float32", "unpreprocessed"],
        ),
        (
            {"pixel_values": np.zeros((3, 32, 32), dtype=np.float32)},
            ["rank 3", "pixel_values (float32 [batch,3,32,32])", "rank 4"],
        ),
        (
            {"pixel_values": np.zeros((2, 3, 16, 16), dtype=np.float32)},
            ["shape [2, 3, 16, 16]", "axis 2 must be 32"],
        ),
        (
            {"pixel_values": np.full((2, 3, 32, 32), np.nan, dtype=np.float32)},
            ["NaN"],
        ),
        (
            {"pixel_values": np.zeros((0, 3, 32, 32), dtype=np.float32)},
            ["holds 0 samples"],
        ),
    ],
    ids=["int-for-float", "rank", "fixed-size", "nan", "no-rows"],
)
def test_npz_image_arrays_are_checked(tmp_path, vit_spec, arrays, parts):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CalibrationDataError) as exc:
        load_samples(path, vit_spec, None, what="--eval")
    assert_one_line(exc, "--eval", str(path), *parts)


@pytest.mark.parametrize(
    ("change", "parts"),
    [
        ({"input_ids": np.ones((2, 5), dtype=np.float32)}, ["float32", "cannot become integers"]),
        ({"input_ids": np.ones((2, 5, 1), dtype=np.int64)}, ["rank 3", "rank 2"]),
        ({"attention_mask": np.ones((2, 6), dtype=np.int64)}, ["sequence 6", "sequence 5"]),
        ({"attention_mask": np.ones((3, 5), dtype=np.int64)}, ["different numbers of samples"]),
        ({"input_ids": np.ones((2, 200), dtype=np.int64)}, ["limit of 128"]),
        ({"input_ids": np.array([["a"] * 5] * 2)}, ["non-numeric"]),
    ],
    ids=["float-ids", "rank", "sequence-mismatch", "count-mismatch", "too-long", "strings"],
)
def test_npz_text_arrays_are_checked(tmp_path, text_spec, change, parts):
    arrays = {n: np.ones((2, 5), dtype=np.int64) for n in BERT_ARGS} | change
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CalibrationDataError) as exc:
        load_samples(path, text_spec, None)
    assert_one_line(exc, "--calibration", str(path), *parts)


def test_npz_ints_that_do_not_fit_are_refused(tmp_path):
    decl = InputDecl("ids", "int32", ("batch", 4), "ints", 0, 10)
    spec = specs.TaskSpec("custom", (decl,), ("y",), Tolerance(), {}, ())
    path = tmp_path / "big.npz"
    np.savez(path, ids=np.full((2, 4), 2**40, dtype=np.int64))
    with pytest.raises(CalibrationDataError) as exc:
        load_samples(path, spec, None)
    assert_one_line(exc, "do not fit int32")
    np.savez(path, ids=np.full((2, 4), 7, dtype=np.int64))
    assert load_samples(path, spec, None)[1].feeds["ids"].dtype == np.int32


# --------------------------------------------------------------------------- bad files


def bad_file(tmp_path: Path, kind: str) -> tuple[Path, list[str]]:
    """A bad calibration file and what its error must say beyond the option and path."""
    if kind == "missing":
        return tmp_path / "nope.txt", ["does not exist"]
    if kind == "folder":
        (tmp_path / "texts.txt").mkdir()
        return tmp_path / "texts.txt", ["is a folder"]
    if kind == "empty":
        (tmp_path / "empty.txt").write_text("")
        return tmp_path / "empty.txt", ["is empty"]
    if kind == "blank-lines":
        (tmp_path / "blank.jsonl").write_text("\n  \n\n")
        return tmp_path / "blank.jsonl", ["holds no JSON lines, only blank lines"]
    if kind == "not-utf8":
        (tmp_path / "latin1.txt").write_bytes("the café sat\n".encode("latin-1"))
        return tmp_path / "latin1.txt", ["not UTF-8", "0xe9"]
    if kind == "bad-json":
        write(tmp_path / "c.jsonl", ['{"text": "the cat"}', "", '{"text": "the dog"'])
        return tmp_path / "c.jsonl", ["line 3 is not valid JSON", '{"text": "..."}']
    if kind == "no-text":
        write(tmp_path / "c.jsonl", ['{"text": "the cat"}', '{"sentence": "the dog"}'])
        return tmp_path / "c.jsonl", ["line 2 has no non-empty", "keys sentence"]
    if kind == "not-object":
        write(tmp_path / "c.jsonl", ['["the cat"]'])
        return tmp_path / "c.jsonl", ["line 1", "a JSON list"]
    if kind == "bad-pair":
        write(tmp_path / "c.jsonl", ['{"text": "the cat", "text_pair": 3}'])
        return tmp_path / "c.jsonl", ["line 1", '"text_pair" is a int']
    if kind == "suffix":
        (tmp_path / "c.csv").write_text("the cat\n")
        return tmp_path / "c.csv", ["suffix '.csv'", ".jsonl", ".npz"]
    if kind == "corrupt-npz":
        (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 not really a zip")
        return tmp_path / "c.npz", ["not a readable .npz"]
    raise AssertionError(kind)


BAD_KINDS = [
    "missing",
    "folder",
    "empty",
    "blank-lines",
    "not-utf8",
    "bad-json",
    "no-text",
    "not-object",
    "bad-pair",
    "suffix",
    "corrupt-npz",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("what", ["--calibration", "--eval"])
def test_bad_files_give_one_line_naming_option_and_path(tmp_path, bert_dir, text_spec, kind, what):
    path, parts = bad_file(tmp_path, kind)
    with pytest.raises(CalibrationDataError) as exc:
        load_samples(path, text_spec, bert_dir, what=what)
    assert_one_line(exc, f"{what} {path}", *parts)


def test_unreadable_files(tmp_path, bert_dir, text_spec, monkeypatch):
    # Tests may run as root, for whom file permissions do not stop reading.
    def denied(path, *args):
        raise PermissionError(13, "Permission denied", str(path))

    text = write(tmp_path / "secret.txt", ["the cat"])
    arrays = tmp_path / "secret.npz"
    np.savez(arrays, **{n: np.ones((1, 3), dtype=np.int64) for n in BERT_ARGS})
    monkeypatch.setattr(Path, "read_bytes", denied)
    monkeypatch.setattr(calibration, "sha256_file", denied)
    for path in (text, arrays):
        with pytest.raises(CalibrationDataError) as exc:
            load_samples(path, text_spec, bert_dir)
        assert_one_line(exc, f"--calibration {path} cannot be read (Permission denied)")


# --------------------------------------------------------------------------- split


def test_split_is_deterministic_and_seeded():
    samples = text_samples(20)
    a, b = split(samples, seed=0), split(samples, seed=0)
    assert [s.name for s in a.evaluation] == [s.name for s in b.evaluation]
    assert [s.name for s in a.calibration] == [s.name for s in b.calibration]
    assert len(a.evaluation) == 4 and len(a.calibration) == 16
    other = split(samples, seed=1)
    assert {s.name for s in other.evaluation} != {s.name for s in a.evaluation}
    assert a.origin["split"]["seed"] == 0 and a.origin["counts"]["evaluation"] == 4
    json.dumps(a.origin)


def test_split_never_shares_a_sample_even_when_duplicated(tmp_path, bert_dir, text_spec):
    lines = TEXTS + ["the cat sat", "THE  cat sat", "hello world"] + [f"{w} fire" for w in "abc"]
    samples = load_samples(write(tmp_path / "dup.txt", lines), text_spec, bert_dir)
    assert len(samples) == 11
    for seed in range(10):
        data = split(samples, seed=seed, eval_fraction=0.5)
        calib_keys = {sample_key(s) for s in data.calibration}
        eval_keys = {sample_key(s) for s in data.evaluation}
        assert not calib_keys & eval_keys
        assert not {id(s) for s in data.calibration} & {id(s) for s in data.evaluation}
        assert len(calib_keys) == len(data.calibration)  # no duplicates within a side either
        # "the cat sat" twice and its lowercased copy: the same tokens, the same sample
        assert data.origin["counts"]["duplicates_dropped"] == 3
        assert len(data.calibration) + len(data.evaluation) == 8


def test_calibration_size_takes_an_even_spread():
    samples = text_samples(20)
    held = text_samples(3, prefix="eval-")
    held = [Sample(s.name, {"x": s.feeds["x"] + 100}) for s in held]
    data = split(samples, evaluation=held, calibration_size=5)
    names = [s.name for s in data.calibration]
    assert len(names) == 5 and names != ["0", "1", "2", "3", "4"]
    assert names == ["2", "6", "10", "14", "18"]
    assert data.origin["split"]["selection"] == "evenly spaced"
    assert data.origin["counts"]["calibration_available"] == 20
    # Held-back evaluation does not move when the calibration cap changes.
    full, capped = split(samples, seed=3), split(samples, seed=3, calibration_size=4)
    assert [s.name for s in full.evaluation] == [s.name for s in capped.evaluation]
    assert len(capped.calibration) == 4
    assert {s.name for s in capped.calibration} <= {s.name for s in full.calibration}


def test_explicit_evaluation_set():
    samples = text_samples(6)
    held = [Sample("other", {"x": np.full((1, 9), 42, dtype=np.int64)}), samples[2]]
    data = split(samples, evaluation=held)
    assert [s.name for s in data.evaluation] == ["other", "2"]
    assert [s.name for s in data.calibration] == ["0", "1", "3", "4", "5"]
    assert data.origin["counts"]["also_in_evaluation_dropped"] == 1
    assert data.origin["split"]["method"] == "explicit evaluation set"
    with pytest.raises(CalibrationDataError) as exc:
        split(samples[:2], evaluation=samples[:2])
    assert_one_line(exc, "also in --eval", "different files")


def test_a_single_sample_cannot_be_split():
    with pytest.raises(CalibrationDataError) as exc:
        split(text_samples(1))
    assert_one_line(exc, "at least 2", "--eval")
    # Duplicates do not count as more samples.
    twice = [text_samples(1)[0], Sample("again", dict(text_samples(1)[0].feeds))]
    with pytest.raises(CalibrationDataError):
        split(twice)
    data = split(text_samples(1), evaluation=text_samples(2)[1:])
    assert len(data.calibration) == 1 and len(data.evaluation) == 1
    tiny = split(text_samples(2), min_eval=5)
    assert len(tiny.calibration) == 1 and len(tiny.evaluation) == 1


def test_split_rejects_bad_settings():
    with pytest.raises(CalibrationDataError, match="--calibration-size must be at least 1"):
        split(text_samples(4), calibration_size=0)
    with pytest.raises(CalibrationDataError, match="fraction"):
        split(text_samples(4), eval_fraction=1.0)


def test_load_split_records_the_files(tmp_path, bert_dir, text_spec):
    calib = write(tmp_path / "calib.txt", TEXTS + ["kiln fire", "the mat"])
    evaluation = write(tmp_path / "eval.jsonl", [json.dumps({"text": t}) for t in TEXTS[:2]])
    data = load_split(calib, text_spec, bert_dir, evaluation=evaluation, max_length=12)
    assert len(data.evaluation) == 2 and len(data.calibration) == 5  # the two shared dropped
    record = data.origin["calibration_file"]
    assert record["sha256"] == hashlib.sha256(calib.read_bytes()).hexdigest()
    assert record["samples"] == 7 and record["format"] == "txt" and record["max_length"] == 12
    assert record["tokens"]["min"] == 3 and record["tokens"]["max"] == 12
    assert data.origin["evaluation_file"]["samples"] == 2
    assert data.origin["counts"]["also_in_evaluation_dropped"] == 2
    assert json.loads(json.dumps(data.origin)) == data.origin


# --------------------------------------------------------------------------- feeding


def test_progress_over_samples():
    samples = text_samples(3)
    out = io.StringIO()
    progress = Progress(console=Console(file=out, force_terminal=True, width=100))
    assert list(iter_with_progress(samples, progress, "calibrating")) == samples
    assert "calibrating" in out.getvalue() and "3/3" in out.getvalue()
    # Inside a stage, whose live status stays up: the bar nests in it.
    nested = io.StringIO()
    progress = Progress(console=Console(file=nested, force_terminal=True, width=100))
    with progress.stage("build", "quantizing"):
        assert list(iter_with_progress(samples, progress, "calibrating")) == samples
    assert "calibrating" in nested.getvalue() and "/3" in nested.getvalue()
    assert "✓" in nested.getvalue()

    quiet_out = io.StringIO()
    quiet = Progress(quiet=True, console=Console(file=quiet_out, force_terminal=True))
    assert list(iter_with_progress(samples, quiet, "calibrating")) == samples
    assert quiet_out.getvalue() == ""


def test_import_loads_neither_torch_nor_transformers():
    code = (
        "import sys, modelkiln.exporter.calibration; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
