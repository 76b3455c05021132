"""Texts (`.txt` lines, `.jsonl` objects) tokenized one at a time with the checkpoint's own
tokenizer, each at its own length: transformers is imported only here, only then."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelkiln.errors import first_line
from modelkiln.exporter.data_samples import (
    NPZ_CONVENTION,
    CalibrationDataError,
    DataSample,
    describe_inputs,
    short_name,
)
from modelkiln.exporter.sources import PREPROCESSING_FILES

if TYPE_CHECKING:
    from modelkiln.exporter.specs import TaskSpec

TOKENIZER_FILES = tuple(
    n
    for n in PREPROCESSING_FILES
    if n not in ("config.json", "preprocessor_config.json", "generation_config.json")
)


def read_texts(path: Path, data: bytes, suffix: str, what: str) -> list[tuple[str, str | None]]:
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CalibrationDataError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    texts: list[tuple[str, str | None]] = []
    for number, raw in enumerate(content.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        if suffix == ".txt":
            texts.append((line, None))
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else first_line(exc)
            raise CalibrationDataError(
                f"{what} {path} line {number} is not valid JSON ({reason}); each line must be "
                'an object like {"text": "..."} or {"text": "...", "text_pair": "..."}'
            ) from None
        text = item.get("text") if isinstance(item, dict) else None
        pair = item.get("text_pair") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip():
            found = (
                f"keys {', '.join(map(str, item)) or 'none'}"
                if isinstance(item, dict)
                else f"a JSON {type(item).__name__}"
            )
            raise CalibrationDataError(
                f'{what} {path} line {number} has no non-empty "text" string (it holds '
                f'{found}); each line must be an object like {{"text": "..."}}'
            )
        if pair is not None and not isinstance(pair, str):
            raise CalibrationDataError(
                f'{what} {path} line {number}: "text_pair" is a {type(pair).__name__}; '
                "it must be a string (or left out)"
            )
        texts.append((text, pair or None))
    if not texts:
        kind = "text lines" if suffix == ".txt" else "JSON lines"
        raise CalibrationDataError(
            f"{what} {path} holds no {kind}, only blank lines; it must hold at least one sample"
        )
    return texts


def _tokenizer(tokenizer_dir: Path | None, path: Path, spec: TaskSpec, what: str) -> Any:
    found = [n for n in TOKENIZER_FILES if tokenizer_dir and (tokenizer_dir / n).is_file()]
    # transformers builds a tokenizer of special tokens only from a bare config.json, which
    # would turn every text into [UNK]s: insist on the tokenizer's own files.
    if tokenizer_dir is None or not found:
        where = f"{tokenizer_dir} has" if tokenizer_dir is not None else "the checkpoint has"
        raise CalibrationDataError(
            f"{what} {path} holds texts but {where} no tokenizer files "
            f"({', '.join(TOKENIZER_FILES[:3])}, …); add the checkpoint's tokenizer files, "
            f"or give a .npz of input arrays ({NPZ_CONVENTION}): {describe_inputs(spec.inputs)}"
        )
    try:
        import transformers
    except ImportError:
        raise CalibrationDataError(
            f"{what} {path} holds texts, which need transformers to tokenize; "
            "pip install 'modelkiln[export]'"
        ) from None
    transformers.utils.logging.set_verbosity_error()
    try:
        return transformers.AutoTokenizer.from_pretrained(
            str(tokenizer_dir), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:
        raise CalibrationDataError(
            f"{what} {path} holds texts but the tokenizer in {tokenizer_dir} does not load "
            f"({first_line(exc)}); fix its files ({', '.join(found)}) or give a .npz"
        ) from None


def text_samples(
    path: Path,
    texts: list[tuple[str, str | None]],
    spec: TaskSpec,
    tokenizer_dir: Path | None,
    max_length: int | None,
    what: str,
) -> tuple[list[DataSample], dict[str, Any]]:
    ids_decl = next((d for d in spec.inputs if d.fill == "token_ids"), None)
    if ids_decl is None:
        raise CalibrationDataError(
            f"{what} {path} holds texts but the model takes {describe_inputs(spec.inputs)}, "
            "none of them token ids of a Hugging Face text model; give a .npz of input arrays "
            f"({NPZ_CONVENTION})"
        )
    if max_length is not None and max_length < 2:
        raise CalibrationDataError(f"max length must be at least 2 tokens, got {max_length}")
    tokenizer = _tokenizer(tokenizer_dir, path, spec, what)
    seq_axis = ids_decl.axes[-1]
    caps = [
        max_length,
        spec.limits.get(seq_axis) if isinstance(seq_axis, str) else seq_axis,
        getattr(tokenizer, "model_max_length", None),
    ]
    limit = min((int(c) for c in caps if isinstance(c, int) and c > 0), default=None)
    samples = []
    lengths = []
    unknown = total = 0
    unk_id = getattr(tokenizer, "unk_token_id", None)
    for text, pair in texts:
        encoded = tokenizer(
            text,
            pair,
            return_tensors="np",
            truncation=limit is not None,
            max_length=limit,
        )
        feeds = _fit_encoding(path, dict(encoded), spec, tokenizer_dir, what)
        ids = feeds[ids_decl.name]
        if ids.size and int(ids.max()) >= ids_decl.high:
            raise CalibrationDataError(
                f"{what} {path}: the tokenizer in {tokenizer_dir} gives token id "
                f"{int(ids.max())} for {short_name(text)!r} but the model's vocabulary has "
                f"{ids_decl.high} entries; "
                "the tokenizer does not belong to this checkpoint"
            )
        lengths.append(int(ids.shape[-1]))
        if unk_id is not None:
            unknown += int((ids == unk_id).sum())
        total += int(ids.size)
        name = short_name(text if pair is None else f"{text} | {pair}")
        samples.append(DataSample(name, feeds))
    record = {
        "max_length": limit,
        "tokens": {"min": min(lengths), "max": max(lengths), "total": total},
        "unknown_token_fraction": round(unknown / total, 4) if total else 0.0,
        "tokenizer": str(tokenizer_dir),
    }
    return samples, record


def _fit_encoding(
    path: Path,
    encoded: Mapping[str, Any],
    spec: TaskSpec,
    tokenizer_dir: Path | None,
    what: str,
) -> dict[str, np.ndarray]:
    """The tokenizer's arrays restricted to the model's inputs, in its dtypes; inputs it does
    not produce are filled like generated feeds, but only zeros, masks and positions. A
    decoder's text is its prefill: no past (length 0), positions 0.. over the text."""
    feeds: dict[str, np.ndarray] = {}
    dims: dict[str, int] = {"past_sequence": 0}
    missing = []
    for decl in spec.inputs:
        if decl.name not in encoded:
            missing.append(decl)
            continue
        value = np.asarray(encoded[decl.name])
        if value.ndim != len(decl.axes):
            raise CalibrationDataError(
                f"{what} {path}: the tokenizer gives '{decl.name}' of rank {value.ndim} but the "
                f"model takes {describe_inputs([decl])}; give a .npz of input arrays"
            )
        feeds[decl.name] = value.astype(decl.dtype)
        dims.update(
            {a: n for a, n in zip(decl.axes, value.shape, strict=True) if isinstance(a, str)}
        )
    if "sequence" in dims:
        dims.setdefault("total_sequence", dims["sequence"])
    for decl in missing:
        if decl.fill not in ("zeros", "token_types", "mask", "positions"):
            made = ", ".join(k for k in encoded) or "nothing"
            raise CalibrationDataError(
                f"{what} {path}: the tokenizer in {tokenizer_dir} does not produce input "
                f"'{decl.name}' that the model takes (it produces {made}); give a .npz of "
                f"input arrays ({NPZ_CONVENTION})"
            )
        shape = tuple(a if isinstance(a, int) else dims.get(a, -1) for a in decl.axes)
        if -1 in shape:
            raise CalibrationDataError(
                f"{what} {path}: cannot size input '{decl.name}' "
                f"({describe_inputs([decl])}) from the tokenizer's output; give a .npz"
            )
        if decl.fill == "positions":
            feeds[decl.name] = np.broadcast_to(np.arange(shape[-1]), shape).astype(decl.dtype)
            continue
        # one unpadded text: segment 0, a mask of ones
        fill = np.zeros if decl.fill in ("zeros", "token_types") else np.ones
        feeds[decl.name] = fill(shape, dtype=decl.dtype)
    return {d.name: feeds[d.name] for d in spec.inputs}
