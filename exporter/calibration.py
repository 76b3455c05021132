"""Calibration and evaluation data: user files turned into batch-1 feeds, split apart.

Static quantization picks activation ranges from real inputs, and the accuracy report must be
measured on other inputs than those, so both come from here and nothing is ever made up:
there is no fallback to random feeds. Each sample is one example at batch 1 with its own
length, because padding every text to the longest one would calibrate attention and
normalization ranges on padding that real traffic rarely has.

Accepted files:
- `.txt`: one text per line (UTF-8, blank lines skipped);
- `.jsonl`: one JSON object per line with a "text" string, plus "text_pair" for pairs;
- `.npz`: one array per model input, named exactly like the input, with the samples along the
  first axis (the batch axis): sample i is `array[i:i+1]` of every array. All arrays hold the
  same number of samples; ranks and fixed sizes are the model's own (`np.savez(f,
  pixel_values=images)` with images of shape [N, 3, 224, 224]).

Texts are tokenized one at a time with the checkpoint's own tokenizer (transformers is
imported only then); they need a model whose inputs declare token ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from modelkiln.artifact import sha256_file
from modelkiln.errors import UserInputError, first_line
from modelkiln.exporter.sources import PREPROCESSING_FILES
from modelkiln.feedgen import InputDecl

if TYPE_CHECKING:
    from modelkiln.exporter.specs import TaskSpec
    from modelkiln.progress import Progress

T = TypeVar("T")
FORMATS = (".txt", ".jsonl", ".npz")
NAME_CHARS = 60
TOKENIZER_FILES = tuple(
    n for n in PREPROCESSING_FILES if n not in ("config.json", "preprocessor_config.json")
)
NPZ_CONVENTION = "one array per model input, named after it, samples along the first axis"


class CalibrationDataError(UserInputError):
    """A calibration or evaluation file is missing, unreadable, or does not fit the model."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


@dataclass(frozen=True, eq=False)
class Sample:
    """One input example at batch 1, at its own length; `name` labels it in reports.

    Compared and hashed by identity (numpy arrays have no single truth value); `sample_key`
    compares content."""

    name: str
    feeds: dict[str, np.ndarray]


@dataclass(frozen=True)
class DataSplit:
    """Calibration and evaluation samples, disjoint; `origin` goes into the manifest."""

    calibration: tuple[Sample, ...]
    evaluation: tuple[Sample, ...]
    origin: dict[str, Any]


# --------------------------------------------------------------------------- loading


def load_samples(
    path: str | Path,
    spec: TaskSpec,
    tokenizer_dir: Path | None,
    *,
    max_length: int | None = None,
    what: str = "--calibration",
) -> list[Sample]:
    """Samples from a `.txt`, `.jsonl` or `.npz` file, checked against the model's inputs.

    `what` is the option the file came from; every error names it and the path.
    `max_length` caps tokenized texts (never above the model's sequence limit or the
    tokenizer's own maximum).
    """
    return _load(Path(path), spec, tokenizer_dir, max_length, what)[0]


def load_split(
    calibration: str | Path,
    spec: TaskSpec,
    tokenizer_dir: Path | None,
    *,
    evaluation: str | Path | None = None,
    calibration_size: int | None = None,
    max_length: int | None = None,
    eval_fraction: float = 0.2,
    seed: int = 0,
) -> DataSplit:
    """`--calibration FILE [--eval FILE]` loaded and split, with the files recorded in origin."""
    samples, calib_record = _load(
        Path(calibration), spec, tokenizer_dir, max_length, "--calibration"
    )
    files: dict[str, Any] = {"calibration_file": calib_record}
    held_out = None
    if evaluation is not None:
        held_out, eval_record = _load(Path(evaluation), spec, tokenizer_dir, max_length, "--eval")
        files["evaluation_file"] = eval_record
    return split(
        samples,
        evaluation=held_out,
        calibration_size=calibration_size,
        eval_fraction=eval_fraction,
        seed=seed,
        origin=files,
    )


def _load(
    path: Path, spec: TaskSpec, tokenizer_dir: Path | None, max_length: int | None, what: str
) -> tuple[list[Sample], dict[str, Any]]:
    _check_file(path, what)
    tokenizer_dir = None if tokenizer_dir is None else Path(tokenizer_dir)
    suffix = path.suffix.lower()
    record: dict[str, Any] = {"file": str(path), "format": suffix[1:]}
    if suffix == ".npz":
        record |= {"sha256": _readable(path, what, sha256_file), "size": path.stat().st_size}
        samples = _npz_samples(path, spec, what)
    else:
        data = _readable(path, what, Path.read_bytes)
        record |= {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        texts = _read_texts(path, data, suffix, what)
        samples, text_record = _text_samples(path, texts, spec, tokenizer_dir, max_length, what)
        record |= text_record
    record["samples"] = len(samples)
    return samples, record


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise CalibrationDataError(
            f"{what} {path} does not exist; give a {', '.join(FORMATS)} file"
        )
    if path.is_dir():
        raise CalibrationDataError(f"{what} {path} is a folder; give a file: {', '.join(FORMATS)}")
    if path.suffix.lower() not in FORMATS:
        raise CalibrationDataError(
            f"{what} {path} has suffix '{path.suffix}', which modelkiln does not read; "
            'give .txt (one text per line), .jsonl (objects with a "text" field) or '
            f".npz ({NPZ_CONVENTION})"
        )
    if path.stat().st_size == 0:
        raise CalibrationDataError(f"{what} {path} is empty; it must hold at least one sample")


def _readable(path: Path, what: str, read: Callable[[Path], T]) -> T:
    try:
        return read(path)
    except OSError as exc:
        reason = exc.strerror or first_line(exc)
        raise CalibrationDataError(
            f"{what} {path} cannot be read ({reason}); check its permissions"
        ) from None


def _read_texts(path: Path, data: bytes, suffix: str, what: str) -> list[tuple[str, str | None]]:
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


def describe_inputs(decls: Iterable[InputDecl]) -> str:
    """`pixel_values (float32 [batch,3,224,224])`, comma-separated, for error messages."""
    return ", ".join(f"{d.name} ({d.dtype} [{','.join(map(str, d.axes))}])" for d in decls)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= NAME_CHARS else text[: NAME_CHARS - 1].rstrip() + "…"


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


def _text_samples(
    path: Path,
    texts: list[tuple[str, str | None]],
    spec: TaskSpec,
    tokenizer_dir: Path | None,
    max_length: int | None,
    what: str,
) -> tuple[list[Sample], dict[str, Any]]:
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
                f"{int(ids.max())} for {_short(text)!r} but the model's vocabulary has "
                f"{ids_decl.high} entries; "
                "the tokenizer does not belong to this checkpoint"
            )
        lengths.append(int(ids.shape[-1]))
        if unk_id is not None:
            unknown += int((ids == unk_id).sum())
        total += int(ids.size)
        name = _short(text if pair is None else f"{text} | {pair}")
        samples.append(Sample(name, feeds))
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
    not produce are filled like generated feeds, but only zeros and masks."""
    feeds: dict[str, np.ndarray] = {}
    dims: dict[str, int] = {}
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
    for decl in missing:
        if decl.fill not in ("zeros", "mask"):
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
        fill = np.zeros if decl.fill == "zeros" else np.ones  # one unpadded text: mask of ones
        feeds[decl.name] = fill(shape, dtype=decl.dtype)
    return {d.name: feeds[d.name] for d in spec.inputs}


def _npz_samples(path: Path, spec: TaskSpec, what: str) -> list[Sample]:
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, AttributeError) as exc:
        raise CalibrationDataError(
            f"{what} {path} is not a readable .npz of numeric arrays ({first_line(exc)}); "
            "write it with numpy.savez"
        ) from None
    expected = [d.name for d in spec.inputs]
    missing = [n for n in expected if n not in arrays]
    unexpected = sorted(n for n in arrays if n not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected)}")
        raise CalibrationDataError(
            f"{what} {path} does not match the model inputs ({'; '.join(parts)}); the model "
            f"takes {describe_inputs(spec.inputs)}: give {NPZ_CONVENTION}"
        )
    counts: dict[str, int] = {}
    dims: dict[str, tuple[int, str]] = {}
    cast: dict[str, np.ndarray] = {}
    for decl in spec.inputs:
        cast[decl.name] = _check_array(path, arrays[decl.name], decl, spec, dims, what)
        counts[decl.name] = cast[decl.name].shape[0]
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n} {c}" for n, c in counts.items())
        raise CalibrationDataError(
            f"{what} {path}: the arrays hold different numbers of samples ({listed}); "
            "every input needs one row per sample"
        )
    count = next(iter(counts.values()))
    if count == 0:
        raise CalibrationDataError(
            f"{what} {path} holds 0 samples (empty first axis); it must hold at least one"
        )
    return [
        Sample(f"{path.name}[{i}]", {n: a[i : i + 1] for n, a in cast.items()})
        for i in range(count)
    ]


def _check_array(
    path: Path,
    array: np.ndarray,
    decl: InputDecl,
    spec: TaskSpec,
    dims: dict[str, tuple[int, str]],
    what: str,
) -> np.ndarray:
    where = f"{what} {path}: array '{decl.name}'"
    takes = f"the model takes {describe_inputs([decl])}"
    if array.ndim != len(decl.axes):
        raise CalibrationDataError(
            f"{where} has rank {array.ndim} (shape {list(array.shape)}) but {takes}; give "
            f"rank {len(decl.axes)} with the samples along the first axis"
        )
    for axis, (want, got) in enumerate(zip(decl.axes, array.shape, strict=True)):
        if axis == 0:
            if isinstance(want, int) and want != 1:
                raise CalibrationDataError(
                    f"{where}: {takes}, a fixed first axis of {want}, but samples are fed one "
                    "row at a time; export the model with a dynamic (or size-1) first axis"
                )
            continue
        if isinstance(want, int) and got != want:
            raise CalibrationDataError(
                f"{where} has shape {list(array.shape)} but {takes}: axis {axis} must be {want}"
            )
        if isinstance(want, str):
            limit = spec.limits.get(want)
            if limit is not None and got > limit:
                raise CalibrationDataError(
                    f"{where} has {want} {got}, longer than the model's limit of {limit}; "
                    "cut the samples to at most that"
                )
            seen = dims.setdefault(want, (got, decl.name))
            if seen[0] != got:
                raise CalibrationDataError(
                    f"{where} has {want} {got} but '{seen[1]}' has {want} {seen[0]}; "
                    f"inputs sharing the '{want}' axis must agree"
                )
    return _cast(where, array, np.dtype(decl.dtype))


def _cast(where: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`array` in `dtype` when no value changes meaning: no float->int, no ints as floats
    (unpreprocessed pixels), no overflow, no NaN."""
    src = array.dtype
    refuse = None
    if src.kind not in "biuf":
        refuse = "it holds non-numeric data"
    elif dtype.kind in "iu" and src.kind == "f":
        refuse = "float values cannot become integers without changing them"
    elif dtype.kind == "f" and src.kind in "biu":
        refuse = "integers here usually mean unpreprocessed data; give the float values"
    elif dtype.kind == "b" and src.kind == "f":
        refuse = "float values cannot become booleans without changing them"
    elif dtype.kind in "iub" and src.kind in "iu" and array.size:
        low, high = int(array.min()), int(array.max())
        info = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        if low < info[0] or high > info[1]:
            refuse = f"its values {low}..{high} do not fit {dtype.name}"
    elif src.kind == "f" and array.size and not np.isfinite(array).all():
        refuse = "it holds NaN or infinite values"
    if refuse:
        raise CalibrationDataError(
            f"{where} is {src.name} but the model takes {dtype.name}: {refuse}"
        )
    return np.ascontiguousarray(array.astype(dtype, copy=False))


# --------------------------------------------------------------------------- splitting


def sample_key(sample: Sample) -> str:
    """Content hash of a sample's feeds: equal texts (or rows) give equal keys, whatever
    their names, and long texts sharing their first 60 characters do not."""
    digest = hashlib.sha256()
    for name in sorted(sample.feeds):
        value = np.ascontiguousarray(sample.feeds[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _dedupe(samples: Iterable[Sample]) -> tuple[list[Sample], list[str]]:
    kept: list[Sample] = []
    keys: list[str] = []
    seen: set[str] = set()
    for sample in samples:
        key = sample_key(sample)
        if key not in seen:
            seen.add(key)
            kept.append(sample)
            keys.append(key)
    return kept, keys


def _spread(items: Sequence[T], k: int | None) -> list[T]:
    """`k` items evenly spaced over `items` (all when k is None or large enough)."""
    n = len(items)
    if k is None or k >= n:
        return list(items)
    return [items[(2 * i + 1) * n // (2 * k)] for i in range(k)]


def split(
    samples: Sequence[Sample],
    *,
    evaluation: Sequence[Sample] | None = None,
    calibration_size: int | None = None,
    eval_fraction: float = 0.2,
    min_eval: int = 1,
    seed: int = 0,
    origin: Mapping[str, Any] | None = None,
) -> DataSplit:
    """Calibration and evaluation sets that share no sample (compared by content).

    With `evaluation`, every other sample may calibrate; otherwise a seeded `eval_fraction`
    (at least `min_eval`, leaving at least one to calibrate) is held back. The held-back set
    does not depend on `calibration_size`, which then keeps an even spread of the rest.
    `origin` (e.g. the files) is merged into the recorded origin.
    """
    if calibration_size is not None and calibration_size < 1:
        raise CalibrationDataError(f"--calibration-size must be at least 1, got {calibration_size}")
    if not 0.0 < eval_fraction < 1.0:
        raise CalibrationDataError(f"eval fraction must be in (0, 1), got {eval_fraction}")
    if min_eval < 1:
        raise CalibrationDataError(f"min eval must be at least 1, got {min_eval}")
    unique, keys = _dedupe(samples)
    duplicates = len(samples) - len(unique)
    counts: dict[str, Any] = {"loaded": len(samples), "duplicates_dropped": duplicates}
    how: dict[str, Any]
    if evaluation is not None:
        held, held_keys = _dedupe(evaluation)
        if not held:
            raise CalibrationDataError("--eval holds no samples; it must hold at least one")
        counts["evaluation_loaded"] = len(evaluation)
        counts["evaluation_duplicates_dropped"] = len(evaluation) - len(held)
        taken = set(held_keys)
        pool = [s for s, k in zip(unique, keys, strict=True) if k not in taken]
        counts["also_in_evaluation_dropped"] = len(unique) - len(pool)
        if not pool:
            raise CalibrationDataError(
                f"every --calibration sample ({len(unique)}) is also in --eval; calibration "
                "and evaluation must differ: give different files"
            )
        how = {"method": "explicit evaluation set"}
    else:
        n = len(unique)
        if n < 2:
            raise CalibrationDataError(
                f"--calibration holds {n} distinct sample(s) ({duplicates} duplicate(s) "
                "dropped); holding some back for evaluation needs at least 2: add samples "
                "or give --eval FILE"
            )
        n_eval = min(max(min_eval, int(n * eval_fraction + 0.5)), n - 1)
        chosen = set(np.random.default_rng(seed).permutation(n)[:n_eval].tolist())
        held = [s for i, s in enumerate(unique) if i in chosen]
        pool = [s for i, s in enumerate(unique) if i not in chosen]
        how = {
            "method": "held back from --calibration",
            "eval_fraction": eval_fraction,
            "min_eval": min_eval,
            "seed": seed,
        }
    calibration = _spread(pool, calibration_size)
    how |= {
        "calibration_size": calibration_size,
        "selection": "all" if len(calibration) == len(pool) else "evenly spaced",
    }
    counts |= {
        "calibration_available": len(pool),
        "calibration": len(calibration),
        "evaluation": len(held),
    }
    record = {**(origin or {}), "split": how, "counts": counts}
    return DataSplit(tuple(calibration), tuple(held), json.loads(json.dumps(record)))


# --------------------------------------------------------------------------- feeding


def iter_with_progress(
    items: Sequence[T], progress: Progress | None, label: str = "calibrating"
) -> Iterator[T]:
    """`items`, with a transient `label  37/200` bar on a terminal (nothing when quiet or
    logging to a file: the enclosing stage prints the closing line)."""
    if progress is None or progress.quiet or not progress.console.is_terminal:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=progress.console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


def calibration_reader(
    samples: Sequence[Sample], progress: Progress | None = None, label: str = "calibrating"
) -> Iterator[dict[str, np.ndarray]]:
    """The samples' feed dicts (fresh dicts, shared arrays), counted on `progress`."""
    for sample in iter_with_progress(samples, progress, label):
        yield dict(sample.feeds)
