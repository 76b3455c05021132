"""What `kiln bench` measures: sizes from the command line, checked against the manifest,
and the feeds for every configuration.

Pure planning, no timing: parse `--batch 1,8,32`, `--seq 16,128` and
`--shape name=1x3x224x224`, check them against each artifact's input specs (fixed sizes,
named dimensions that need a size, the model's longest sequence) and generate feeds from
the manifest's value kinds (token ids inside the vocabulary), with attention masks of ones
so every configuration does the full work of its nominal size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from modelkiln.errors import UserInputError
from modelkiln.generated_feeds import InputDecl, ValueKind, generate_feeds
from modelkiln.tensors import TensorSpec

BATCH = "batch"
SEQUENCE = "sequence"
DEFAULT_BATCH = (1, 8, 32)
DEFAULT_SEQ = (128,)

Dims = dict[str, int]


def parse_sizes(text: str, option: str) -> tuple[int, ...]:
    """`"1,8,32"` -> (1, 8, 32); every size a positive integer, duplicates dropped."""
    sizes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise UserInputError(
                f"{option} {text!r}: give positive integers separated by commas, e.g. 1,8,32"
            )
        if int(part) not in sizes:
            sizes.append(int(part))
    return tuple(sizes)


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`"pixel_values=1x3x224x224"` -> ("pixel_values", (1, 3, 224, 224))."""
    name, sep, dims = text.partition("=")
    parts = dims.lower().split("x")
    if not sep or not name.strip() or not all(p.strip().isdigit() for p in parts):
        raise UserInputError(
            f"--shape {text!r}: write it as INPUT=SIZExSIZE…, e.g. pixel_values=1x3x224x224"
        )
    return name.strip(), tuple(int(p) for p in parts)


def bench_decls(
    inputs: Mapping[str, TensorSpec], values: Mapping[str, ValueKind]
) -> tuple[list[InputDecl], list[str]]:
    """Input declarations for benchmarking, and notes on inputs whose values were guessed.

    Attention masks become all ones (no padding), so a batch of 32 × 128 tokens really is
    32 × 128 tokens of work. Manifests from before value kinds were recorded get a guess:
    masks of ones, other integers 0/1 (valid, if unrealistic, token ids).
    """
    decls, notes = [], []
    for name, spec in inputs.items():
        decl = InputDecl.of(name, spec, values.get(name))
        guessed = name not in values
        integer = np.issubdtype(np.dtype(decl.dtype), np.integer) or decl.dtype == "bool"
        if decl.fill == "mask" or (guessed and integer and "mask" in decl.name):
            decl = dataclasses.replace(decl, fill="ints", low=1, high=2)
        elif guessed:
            notes.append(
                f"input '{decl.name}': the manifest records no value kind (exported by an older "
                f"modelkiln); filled with {decl.fill} values; re-export for realistic inputs"
            )
        decls.append(decl)
    return decls, notes


def plan_dims(
    label: str,
    inputs: Mapping[str, TensorSpec],
    batches: Sequence[int] | None,
    seqs: Sequence[int] | None,
    shapes: Mapping[str, Sequence[int]],
    seq_limit: int | None = None,
) -> list[Dims]:
    """Every combination of sizes to measure for one artifact, checked against its inputs.

    `batches`/`seqs` of None mean "the default, where the model has such a dimension".
    `shapes` sets whole input shapes; axes named batch and sequence take their sizes from
    `batches` and `seqs`, fixed axes must match the manifest, other named axes are bound.
    """
    axes = {name: list(spec.shape) for name, spec in inputs.items()}
    named = {a for shape in axes.values() for a in shape if isinstance(a, str)}
    bound = _bind_shapes(label, axes, shapes)
    missing = sorted(named - bound.keys() - {BATCH, SEQUENCE})
    if missing:
        dim = missing[0]
        name = next(n for n, shape in axes.items() if dim in shape)
        example = "x".join(str(a) if isinstance(a, int) else "N" for a in axes[name])
        raise UserInputError(
            f"{label}: input '{name}' has dimension '{dim}' with no size; pass "
            f"--shape {name}={example} with N filled in"
        )
    if BATCH in named:
        batch_sizes = tuple(batches or DEFAULT_BATCH)
    elif batches and tuple(batches) != (1,):
        raise UserInputError(
            f"{label} has no '{BATCH}' dimension ({_describe(axes)}); its shapes are fixed, "
            "so pass --batch 1"
        )
    else:
        batch_sizes = (1,)
    if SEQUENCE in named:
        if seqs is None:  # the default, shortened to what the model takes
            seqs = tuple(min(s, seq_limit or s) for s in DEFAULT_SEQ)
        seq_sizes: tuple[int | None, ...] = tuple(seqs)
        too_long = [s for s in seqs if seq_limit is not None and s > seq_limit]
        if too_long:
            raise UserInputError(
                f"{label} takes at most {seq_limit} tokens (max_position_embeddings); "
                f"--seq {too_long[0]} is longer"
            )
    else:
        seq_sizes = (None,)
    plans = []
    for b in batch_sizes:
        for s in seq_sizes:
            dims = dict(bound)
            if BATCH in named:
                dims[BATCH] = b
            if s is not None:
                dims[SEQUENCE] = s
            plans.append(dims)
    return plans


def check_seq_used(labels_and_inputs: Iterable[tuple[str, Mapping[str, TensorSpec]]]) -> None:
    """`--seq` given explicitly but no artifact has a sequence dimension: say so."""
    pairs = list(labels_and_inputs)
    if not any(SEQUENCE in spec.shape for _, inputs in pairs for spec in inputs.values()):
        names = ", ".join(label for label, _ in pairs)
        raise UserInputError(f"--seq given, but no input of {names} has a '{SEQUENCE}' dimension")


def make_feeds(
    decls: Sequence[InputDecl], dims: Mapping[str, int], seed: int
) -> dict[str, np.ndarray]:
    return generate_feeds(decls, dims, seed)


def items_per_run(dims: Mapping[str, int]) -> int:
    """What throughput counts: rows of the batch (one when the model has no batch axis)."""
    return int(dims.get(BATCH, 1))


def dims_label(dims: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in dims.items())


def _bind_shapes(
    label: str, axes: Mapping[str, list[int | str]], shapes: Mapping[str, Sequence[int]]
) -> Dims:
    bound: Dims = {}
    for name, sizes in shapes.items():
        if name not in axes:
            raise UserInputError(
                f"--shape {name}=…: {label} has no input '{name}' ({_describe(axes)})"
            )
        expected = axes[name]
        given = "x".join(str(s) for s in sizes)
        if len(sizes) != len(expected):
            raise UserInputError(
                f"--shape {name}={given} has {len(sizes)} dimensions; {label} input '{name}' "
                f"has {len(expected)}: [{', '.join(str(a) for a in expected)}]"
            )
        for axis, (want, size) in enumerate(zip(expected, sizes, strict=True)):
            if isinstance(want, int):
                if want != size:
                    raise UserInputError(
                        f"--shape {name}={given}: axis {axis} of '{name}' is fixed at {want} "
                        f"in {label} ([{', '.join(str(a) for a in expected)}]), not {size}"
                    )
            elif want in (BATCH, SEQUENCE):
                continue  # sizes come from --batch / --seq
            elif want in bound and bound[want] != size:
                raise UserInputError(
                    f"--shape gives dimension '{want}' as {bound[want]} and as {size}; "
                    "inputs sharing a named dimension must agree"
                )
            else:
                bound[want] = int(size)
    return bound


def _describe(axes: Mapping[str, list[int | str]]) -> str:
    return ", ".join(f"{n}[{', '.join(str(a) for a in shape)}]" for n, shape in axes.items())
