"""Reduced precision with evidence: calibration, the accuracy report, and `--precision auto`.

Every non-fp32 artifact is measured against fp32 PyTorch on evaluation samples kept apart
from calibration (`modelkiln.exporter.accuracy`). `--precision auto` builds every precision
the target's backend offers, measures each one's accuracy and latency, and keeps the fastest
that meets the budget. When the best quantized candidate misses, it is made mixed precision:
the quantized layers are ranked by how much leaving each one in floating point recovers,
and the most sensitive are kept in floating point until the budget is met.

The pipeline hands in three callables, so this module knows nothing about staging folders
or manifests: `build(precision, keep, folder) -> backend section`, `open(folder, section,
precision) -> session`, and the evaluation set with its fp32 reference outputs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.errors import UserInputError
from modelkiln.exporter.accuracy import Budget, check_budget_fits, measure

QUANTIZED = ("int8-dynamic", "int8-static", "int8-weights", "int4-weights")
HALF = ("fp16", "bf16")
REDUCED = HALF + QUANTIZED
# A quantized artifact built without a budget must still not be broken: this catches a
# quantization that went wrong, not one that is merely less accurate than wanted.
DEFAULT_BUDGET = {"cosine": 0.95, "top1": 0.95}
MAX_MIXED_STEPS = 6
# Precisions whose layers can be kept in float one by one (activation quantization);
# weight-only compression has no per-layer activation quantizers to remove.
MIXABLE = ("int8-static", "int8-dynamic")

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class PrecisionOptions:
    """What the user asked for (`kiln export --precision ... --calibration ...`)."""

    precision: str | None = None  # overrides every target's own precision
    calibration: Path | None = None
    evaluation: Path | None = None
    calibration_size: int | None = None
    budget: Budget = field(default_factory=Budget)
    keep_best: bool = False

    @property
    def has_data(self) -> bool:
        return self.calibration is not None or self.evaluation is not None


def backend_precisions(backend: Any) -> tuple[str, ...]:
    return tuple(getattr(backend, "precisions", ("fp32",)))


def check_request(options: PrecisionOptions, targets: Sequence[tuple[Any, Any]]) -> None:
    """Refuse what cannot work before anything slow starts: (target, backend) pairs."""
    from modelkiln.exporter.calibration import _check_file

    for path, what in ((options.calibration, "--calibration"), (options.evaluation, "--eval")):
        if path is not None:
            _check_file(Path(path), what)
    if options.calibration_size is not None and options.calibration_size < 1:
        raise UserInputError(
            f"--calibration-size must be at least 1, got {options.calibration_size}"
        )
    reduced = [t for t, _ in targets if t.precision in REDUCED or t.precision == "auto"]
    if not options.budget.empty and not reduced:
        raise UserInputError(
            "--min-cosine / --min-top1-agreement judge reduced precisions, and every target "
            "here is fp32 (which is validated against the reference directly); add "
            "--precision (e.g. int8-dynamic or auto)"
        )
    if options.keep_best and all(effective_budget(options, t).empty for t, _ in targets):
        raise UserInputError("--keep-best applies to an accuracy budget: add --min-cosine X")
    for target, backend in targets:
        precision = target.precision
        offered = backend_precisions(backend)
        if precision == "auto":
            if len(offered) < 2:
                raise UserInputError(
                    f"target '{target.name}': --precision auto needs a backend with reduced "
                    f"precisions; {backend.name} builds {', '.join(offered)} only"
                )
            if effective_budget(options, target).empty:
                raise UserInputError(
                    "--precision auto needs an accuracy budget: --min-cosine X (embeddings) "
                    "or --min-top1-agreement X (classifiers), or a [budget] table in the "
                    "target file"
                )
            unknown = [c for c in candidate_precisions(target, backend) if c not in offered]
            if unknown:
                raise UserInputError(
                    f"target '{target.name}': candidates {', '.join(unknown)} are not built "
                    f"by {backend.name}, which builds {', '.join(offered)}"
                )
        elif precision not in offered:
            raise UserInputError(
                f"target '{target.name}': {backend.name} builds {', '.join(offered)}, "
                f"not {precision}"
            )
        calibrated = set(getattr(backend, "calibrated", ()))
        needs_calibration = precision in calibrated or (
            precision == "auto" and calibrated & set(candidate_precisions(target, backend))
        )
        if needs_calibration and options.calibration is None:
            which = precision if precision != "auto" else "auto (it tries int8-static)"
            raise UserInputError(
                f"target '{target.name}': precision {which} needs calibration data: "
                "--calibration FILE (.txt/.jsonl texts or .npz of inputs); modelkiln never "
                "calibrates on random data"
            )
        if (precision in QUANTIZED or precision == "auto") and not options.has_data:
            raise UserInputError(
                f"target '{target.name}': precision {precision} is measured against fp32 on "
                "real inputs: give --eval FILE (or --calibration FILE, of which a share is "
                "held back)"
            )


def effective_budget(options: PrecisionOptions, target: Any) -> Budget:
    """The command line's budget, else the target file's [budget] table."""
    if not options.budget.empty:
        return options.budget
    return Budget(**dict(getattr(target, "budget", {}) or {}))


def candidate_precisions(target: Any, backend: Any) -> tuple[str, ...]:
    return tuple(getattr(target, "candidates", ()) or ()) or backend_precisions(backend)


def default_budget(task: str) -> Budget:
    from modelkiln.exporter.accuracy import CLASSIFIERS

    if task in CLASSIFIERS:
        return Budget(min_top1_agreement=DEFAULT_BUDGET["top1"])
    return Budget(min_cosine=DEFAULT_BUDGET["cosine"])


# --------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """The evaluation samples, their fp32 reference outputs, and the calibration feeds."""

    task: str
    outputs: tuple[str, ...]
    names: list[str]
    feeds: list[dict[str, np.ndarray]]
    reference: list[dict[str, np.ndarray]]
    calibration: list[dict[str, np.ndarray]]
    origin: dict[str, Any]

    def measure(self, run: Runner) -> dict[str, Any]:
        got = [run(f) for f in self.feeds]
        return measure(self.task, self.outputs, self.names, self.feeds, self.reference, got)


def load_evaluation(
    options: PrecisionOptions,
    spec: Any,
    tokenizer_dir: Path | None,
    reference: Runner,
    progress: Any = None,
    max_length: int | None = None,
) -> Evaluation:
    """Read the data files, split them, and run the fp32 reference on the evaluation part.

    `max_length` truncates texts (e.g. to the largest sequence every target accepts)."""
    from modelkiln.exporter import calibration as cal

    if options.calibration is not None:
        split = cal.load_split(
            options.calibration,
            spec,
            tokenizer_dir,
            evaluation=options.evaluation,
            calibration_size=options.calibration_size,
            max_length=max_length,
        )
        calib, evaluation, origin = split.calibration, split.evaluation, split.origin
    else:
        assert options.evaluation is not None
        evaluation = tuple(
            cal.load_samples(
                options.evaluation, spec, tokenizer_dir, max_length=max_length, what="--eval"
            )
        )
        from modelkiln.artifact import sha256_file

        path = Path(options.evaluation)
        record = {
            "file": str(path),
            "format": path.suffix.lower().lstrip("."),
            "sha256": sha256_file(path),
            "size": path.stat().st_size,
            "samples": len(evaluation),
        }
        calib, origin = (), {"evaluation_file": record, "counts": {"evaluation": len(evaluation)}}
    feeds = [dict(s.feeds) for s in evaluation]
    ref = [reference(f) for f in cal.iter_with_progress(feeds, progress, "fp32 reference")]
    return Evaluation(
        task=spec.task,
        outputs=tuple(spec.outputs),
        names=[s.name for s in evaluation],
        feeds=feeds,
        reference=ref,
        calibration=[dict(s.feeds) for s in calib],
        origin=origin,
    )


def probe_ms(run: Runner, feeds: Mapping[str, np.ndarray], runs: int = 10) -> float:
    """Median latency of a few runs after one warm-up: a ranking of candidates built in the
    same process, not a benchmark (that is `kiln bench`)."""
    run(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


# --------------------------------------------------------------------------- auto search


@dataclass
class Candidate:
    precision: str
    keep: tuple[str, ...] = ()
    folder: Path | None = None
    section: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    latency_ms: float | None = None
    size_bytes: int | None = None
    misses: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        if self.keep:
            return f"{self.precision} mixed ({len(self.keep)} kept float)"
        return self.precision

    @property
    def passed(self) -> bool:
        return self.error is None and not self.misses and self.accuracy is not None

    def row(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "label": self.label,
            "kept_float": list(self.keep),
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "size_bytes": self.size_bytes,
            "accuracy": self.accuracy,
            "passed": self.passed,
            "misses": self.misses,
            "error": self.error,
        }


Build = Callable[[str, tuple[str, ...], Path], dict[str, Any]]
Open = Callable[[Path, dict[str, Any], str], Any]


@dataclass
class Search:
    """Builds and measures candidates in `workdir`; `chosen` is the fastest that passed."""

    build: Build
    open: Open
    evaluation: Evaluation
    budget: Budget
    probe_feeds: Mapping[str, np.ndarray]
    workdir: Path
    say: Callable[[str], None] = lambda _m: None
    candidates: list[Candidate] = field(default_factory=list)

    def try_one(self, precision: str, keep: tuple[str, ...] = ()) -> Candidate:
        from modelkiln.errors import ModelkilnError

        folder = self.workdir / f"{len(self.candidates):02d}-{precision}"
        folder.mkdir(parents=True)
        cand = Candidate(precision, keep, folder)
        self.candidates.append(cand)
        try:
            cand.section = self.build(precision, keep, folder)
            session = self.open(folder, cand.section, precision)
            cand.accuracy = self.evaluation.measure(session.run)
            cand.latency_ms = probe_ms(session.run, self.probe_feeds)
            del session
        except ModelkilnError as exc:
            cand.error = str(exc)
            self.say(f"  {cand.label}: failed: {exc}")
            return cand
        cand.size_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        cand.misses = self.budget.check(cand.accuracy)
        verdict = "meets the budget" if not cand.misses else "; ".join(cand.misses)
        self.say(
            f"  {cand.label}: {cand.latency_ms:.2f} ms, {cand.size_bytes / 1e6:.1f} MB, "
            f"{_accuracy_text(cand.accuracy)}: {verdict}"
        )
        return cand

    def run(self, precisions: Sequence[str], quantizable: Sequence[str]) -> Candidate | None:
        for precision in precisions:
            self.try_one(precision)
        best = self.best()
        fastest = min(
            (c for c in self.candidates if c.latency_ms is not None),
            key=lambda c: c.latency_ms or 0.0,
            default=None,
        )
        if fastest is not None and fastest is not best and fastest.precision in MIXABLE:
            # The fastest candidate missed the budget: try keeping its sensitive layers float.
            self.mixed(fastest, quantizable)
        return self.best()

    def best(self) -> Candidate | None:
        passed = [c for c in self.candidates if c.passed]
        return min(passed, key=lambda c: c.latency_ms or 0.0, default=None)

    def closest(self) -> Candidate | None:
        measured = [c for c in self.candidates if c.accuracy is not None]
        return max(measured, key=lambda c: _score(c.accuracy), default=None)

    def mixed(self, base: Candidate, quantizable: Sequence[str]) -> None:
        """Rank layers by what keeping each alone in float recovers, then keep the most
        sensitive ones float, doubling their number until the budget is met."""
        if not quantizable or base.accuracy is None:
            return
        self.say(f"ranking {len(quantizable)} layers of {base.precision} by sensitivity")
        base_score = _score(base.accuracy)
        gains: list[tuple[float, str]] = []
        for name in quantizable:
            accuracy = self._accuracy_only(base.precision, (name,))
            if accuracy is not None:
                gains.append((_score(accuracy) - base_score, name))
        ranked = [n for g, n in sorted(gains, key=lambda t: -t[0]) if g > 0]
        if not ranked:
            self.say("  no single layer recovers accuracy; no mixed-precision candidate")
            return
        count = 1
        for _ in range(MAX_MIXED_STEPS):
            keep = tuple(ranked[:count])
            cand = self.try_one(base.precision, keep)
            if cand.passed or count >= len(ranked):
                return
            count = min(count * 2, len(ranked))

    def _accuracy_only(self, precision: str, keep: tuple[str, ...]) -> dict[str, Any] | None:
        """Accuracy of a variant, built in a throwaway folder and not listed as a candidate."""
        import shutil

        from modelkiln.errors import ModelkilnError

        folder = self.workdir / "probe"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            section = self.build(precision, keep, folder)
            session = self.open(folder, section, precision)
            return self.evaluation.measure(session.run)
        except ModelkilnError:
            return None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def table(self) -> list[dict[str, Any]]:
        return [c.row() for c in self.candidates]


def _score(accuracy: Mapping[str, Any] | None) -> float:
    if not accuracy:
        return float("-inf")
    if accuracy.get("metric") == "top1_agreement":
        return float(accuracy.get("top1_agreement") or 0.0)
    return float((accuracy.get("cosine") or {}).get("min", float("-inf")))


def _accuracy_text(accuracy: Mapping[str, Any] | None) -> str:
    from modelkiln.exporter.accuracy import summary

    return summary(accuracy) if accuracy else "not measured"


def quantizable_nodes(model: Any) -> list[str]:
    """Names of the nodes quantization touches (MatMul/Gemm/Conv with a constant weight),
    in graph order: the units mixed precision can keep in floating point."""
    names = []
    for node in model.graph:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or not node.name:
            continue
        if any(v is not None and v.const_value is not None for v in node.inputs[1:2]):
            names.append(node.name)
    return names


def module_of(model: Any, node_name: str) -> str:
    """The torch module a node came from (e.g. encoder.layer.3.output.dense), for reports."""
    for node in model.graph:
        if node.name == node_name:
            scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
            if scopes:
                parts = [p.strip(" '") for p in scopes.strip("[]").split(",")]
                if len(parts) >= 2 and parts[-2]:
                    return parts[-2]
    return node_name


def check_budget_for(task: str, options: PrecisionOptions) -> None:
    check_budget_fits(options.budget, task)


# --------------------------------------------------------------------------- pipeline hooks


def with_precision(target: Any, options: PrecisionOptions) -> Any:
    """The target with `--precision` applied (it overrides the target file's precision)."""
    import dataclasses

    if options.precision is None or options.precision == target.precision:
        return target
    return dataclasses.replace(target, precision=options.precision)


def check_backend(backend: Any, target: Any) -> None:
    """`backend.check`, for `auto` once per precision the backend offers."""
    import dataclasses

    if target.precision != "auto":
        backend.check(target)
        return
    for precision in backend_precisions(backend):
        backend.check(dataclasses.replace(target, precision=precision))


def needs_evaluation(precision: str, options: PrecisionOptions) -> bool:
    """Quantized and auto always; fp16/bf16 when the user gave data to measure them on."""
    return precision in QUANTIZED or precision == "auto" or (precision in HALF and options.has_data)


def build_arguments(
    backend: Any, target: Any, evaluation: Evaluation | None, keep: Sequence[str] = ()
) -> dict[str, Any]:
    """Keyword arguments for `backend.build`: none for backends that build fp32 only."""
    if not hasattr(backend, "precisions"):
        return {}
    args: dict[str, Any] = {"keep": tuple(keep)}
    if target.precision in getattr(backend, "calibrated", ()):
        args["calibration"] = evaluation.calibration if evaluation is not None else None
    return args


def replay_validation(prepared: Any, run: Runner) -> dict[str, Any]:
    """Golden samples of a quantized artifact: its outputs differ from fp32 by design (its
    accuracy is judged on the evaluation set), so the replay tolerance is what this build
    measured, doubled, with a floor: `kiln validate` then checks the artifact still behaves
    as built on another machine or runtime version."""
    from modelkiln.exporter.reference import compare_samples
    from modelkiln.exporter.specs import Tolerance

    outputs = {id(feeds): run(feeds) for feeds, _ in prepared.samples}  # run once, compare twice

    def replay(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return outputs[id(feeds)]

    measured = compare_samples(prepared.samples, replay, Tolerance(atol=1e30), prepared.check_dims)
    atol = float(f"{max(2 * measured['max_abs_diff'], 1e-3):.3g}")
    report = compare_samples(prepared.samples, replay, Tolerance(atol=atol), prepared.check_dims)
    report["tolerance_source"] = (
        "measured at build: 2x the quantized artifact's max abs diff from the reference; "
        "accuracy against fp32 is in the manifest's accuracy section"
    )
    return report


def accuracy_section(
    target: Any,
    run: Runner,
    options: PrecisionOptions,
    evaluation: Evaluation,
    search: Any = None,
) -> dict[str, Any]:
    """The manifest's accuracy report: measured on the evaluation set, checked against the
    budget (the user's, else a floor for quantized precisions)."""
    chosen = search.chosen if search is not None else None
    report = chosen.accuracy if chosen is not None and chosen.accuracy else evaluation.measure(run)
    budget = effective_budget(options, target)
    source = "command line" if not options.budget.empty else "target file"
    if budget.empty and target.precision in QUANTIZED:
        budget, source = default_budget(evaluation.task), "default floor"
    misses = budget.check(report)
    section: dict[str, Any] = {
        **report,
        "reference": "fp32 PyTorch",
        "budget": {**budget.to_json(), "source": source if not budget.empty else None},
        "misses": misses,
        "data": evaluation.origin,
    }
    if search is not None:
        section["search"] = search.record()
        if search.kept_best and misses:
            # --keep-best: written although it misses; the misses stay on record.
            section["kept_best"] = True
            section["missed"] = section.pop("misses")
            section["misses"] = []
    return section


@dataclass
class SearchResult:
    search: Search
    chosen: Candidate
    kept_best: bool = False  # chosen by --keep-best although it misses the budget

    def adopt(self, stage: Path) -> dict[str, Any]:
        """Move the chosen candidate's files into the artifact's staging folder."""
        import shutil

        assert self.chosen.folder is not None and self.chosen.section is not None
        for item in self.chosen.folder.iterdir():
            shutil.move(str(item), stage / item.name)
        shutil.rmtree(self.search.workdir, ignore_errors=True)
        return self.chosen.section

    def record(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen.label,
            "kept_best": self.kept_best,
            "budget": self.search.budget.to_json(),
            "probe": "median of 10 runs at "
            + ", ".join(f"{k}={v.shape}" for k, v in self.search.probe_feeds.items()),
            "candidates": self.search.table(),
        }


def run_search(
    prepared: Any,
    out: Path,
    target: Any,
    backend: Any,
    options: PrecisionOptions,
    evaluation: Evaluation,
    progress: Any,
    manifest_for: Callable[[Any, str, Any, dict[str, Any]], dict[str, Any]],
) -> SearchResult:
    """Build every precision the backend offers, keep the fastest that meets the budget."""
    import dataclasses
    import shutil
    import tempfile

    from modelkiln.artifact import Artifact
    from modelkiln.errors import ValidationError
    from modelkiln.exporter.specs import make_inputs

    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{out.name}-candidates-", dir=out.parent))

    def build(precision: str, keep: tuple[str, ...], folder: Path) -> dict[str, Any]:
        tgt = dataclasses.replace(target, precision=precision)
        return backend.build(
            prepared.model, tgt, folder, **build_arguments(backend, tgt, evaluation, keep)
        )

    def open_session(folder: Path, section: dict[str, Any], precision: str) -> Any:
        tgt = dataclasses.replace(target, precision=precision)
        return backend.load(Artifact(folder, manifest_for(prepared, folder.name, tgt, section)))

    dims = dict(prepared.check_dims[0])
    if "sequence" in dims:
        dims["sequence"] = 128
    if "batch" in dims:
        dims["batch"] = 1
    for dim, rng in target.shapes.items():  # sessions refuse sizes outside the ranges
        if dim in dims:
            dims[dim] = min(max(dims[dim], rng.min), rng.max)
    say = (
        (lambda m: progress.console.print(m, style="dim", markup=False, soft_wrap=True))
        if (not progress.quiet)
        else (lambda _m: None)
    )
    search = Search(
        build=build,
        open=open_session,
        evaluation=evaluation,
        budget=effective_budget(options, target),
        probe_feeds=make_inputs(prepared.spec, prepared.spec.fit(dims)),
        workdir=workdir,
        say=say,
    )
    try:
        with progress.stage("search", f"trying precisions for target {target.name}"):
            best = search.run(
                candidate_precisions(target, backend), quantizable_nodes(prepared.model)
            )
        kept_best = False
        if best is None and options.keep_best:
            best, kept_best = search.closest(), True
        if best is None:
            closest = search.closest()
            hint = (
                f"; closest: {closest.label} ({_accuracy_text(closest.accuracy)})"
                if closest
                else ""
            )
            raise ValidationError(
                f"no precision of target {target.name} meets the budget "
                f"({_budget_text(search.budget)}){hint}; nothing was written "
                "(--keep-best writes the closest)",
                {
                    "failures": [
                        f"{c.label}: {'; '.join(c.misses) or c.error}" for c in search.candidates
                    ],
                    "candidates": search.table(),
                },
            )
        if not progress.quiet:
            progress.console.print(_table_text(search, best), markup=False, soft_wrap=True)
        return SearchResult(search, best, kept_best)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _budget_text(budget: Budget) -> str:
    parts = []
    if budget.min_cosine is not None:
        parts.append(f"min cosine {budget.min_cosine}")
    if budget.min_top1_agreement is not None:
        parts.append(f"top-1 agreement {budget.min_top1_agreement}")
    return ", ".join(parts)


def _table_text(search: Search, chosen: Candidate) -> str:
    head = ("candidate", "latency ms", "size MB", "accuracy", "budget")
    rows = []
    for c in search.candidates:
        verdict = "chosen" if c is chosen else ("pass" if c.passed else "fail")
        rows.append(
            (
                c.label,
                "-" if c.latency_ms is None else f"{c.latency_ms:.2f}",
                "-" if c.size_bytes is None else f"{c.size_bytes / 1e6:.1f}",
                c.error.split(":")[0] if c.error else _short_accuracy(c.accuracy),
                verdict,
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in (head, *rows)
    ]
    return "\n".join(lines)


def _short_accuracy(accuracy: Mapping[str, Any] | None) -> str:
    if not accuracy:
        return "-"
    if accuracy.get("metric") == "top1_agreement":
        return f"top-1 {accuracy['top1_agreement']:.4f}"
    return f"cos min {accuracy['cosine']['min']:.4f} mean {accuracy['cosine']['mean']:.4f}"
