"""`--precision auto`: build every candidate precision, measure each one's accuracy and
latency, keep the fastest that meets the budget.

When the fastest candidate is quantized with activation quantizers (int8-static,
int8-dynamic) and misses the budget, it is made mixed precision: its layers are ranked by how
much leaving each one alone in floating point recovers, and the most sensitive are kept in
floating point, doubling their number until the budget is met.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.backends.base import Backend
from modelkiln.errors import ModelkilnError, ValidationError
from modelkiln.manifest import Accuracy, BackendSection
from modelkiln.precision.budget import Budget
from modelkiln.precision.candidates import (
    Candidate,
    build_and_open,
    build_request,
    quantizable_nodes,
)
from modelkiln.precision.evaluation import Evaluation
from modelkiln.precision.names import Precision
from modelkiln.precision.report import accuracy_text, table_text
from modelkiln.prepare import Prepared
from modelkiln.progress import Progress
from modelkiln.targets import Target
from modelkiln.tensors import Runner

MAX_MIXED_STEPS = 6


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


@dataclass
class Search:
    """Builds and measures candidates in `workdir`; `best()` is the fastest that passed."""

    prepared: Prepared
    target: Target
    backend: Backend
    evaluation: Evaluation
    budget: Budget
    workdir: Path
    say: Callable[[str], None] = lambda _m: None
    candidates: list[Candidate] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.probe_feeds = self.prepared.probe_feeds(self.target.ranges)

    def _measure(
        self, precision: str, keep: tuple[str, ...], folder: Path
    ) -> tuple[BackendSection, Accuracy, Any]:
        """Build one variant into `folder` and measure its accuracy; (section, accuracy,
        session)."""
        target = dataclasses.replace(self.target, precision=precision)
        request = build_request(self.prepared, target, self.backend, folder, self.evaluation, keep)
        section, session = build_and_open(self.prepared, self.backend, request)
        return section, self.evaluation.measure(session), session

    def try_one(self, precision: str, keep: tuple[str, ...] = ()) -> Candidate:
        folder = self.workdir / f"{len(self.candidates):02d}-{precision}"
        folder.mkdir(parents=True)
        cand = Candidate(precision, keep, folder)
        self.candidates.append(cand)
        try:
            cand.section, cand.accuracy, session = self._measure(precision, keep, folder)
            cand.latency_ms = probe_ms(session.run, self.probe_feeds)
            del session
        except ModelkilnError as exc:
            cand.error = str(exc)
            self.say(f"  {cand.label}: failed: {exc}")
            return cand
        cand.size_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        cand.misses = self.budget.check(cand.accuracy.to_json())
        verdict = "meets the budget" if not cand.misses else "; ".join(cand.misses)
        self.say(
            f"  {cand.label}: {cand.latency_ms:.2f} ms, {cand.size_bytes / 1e6:.1f} MB, "
            f"{accuracy_text(cand)}: {verdict}"
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
        if fastest is not None and fastest is not best and Precision(fastest.precision).mixable:
            # The fastest candidate missed the budget: try keeping its sensitive layers float.
            self.mixed(fastest, quantizable)
        return self.best()

    def best(self) -> Candidate | None:
        passed = [c for c in self.candidates if c.passed]
        return min(passed, key=lambda c: c.latency_ms or 0.0, default=None)

    def closest(self) -> Candidate | None:
        measured = [c for c in self.candidates if c.accuracy is not None]
        return max(measured, key=lambda c: c.accuracy.score if c.accuracy else 0.0, default=None)

    def mixed(self, base: Candidate, quantizable: Sequence[str]) -> None:
        """Rank layers by what keeping each alone in float recovers, then keep the most
        sensitive ones float, doubling their number until the budget is met."""
        if not quantizable or base.accuracy is None:
            return
        self.say(f"ranking {len(quantizable)} layers of {base.precision} by sensitivity")
        base_score = base.accuracy.score
        gains: list[tuple[float, str]] = []
        for name in quantizable:
            accuracy = self._accuracy_only(base.precision, (name,))
            if accuracy is not None:
                gains.append((accuracy.score - base_score, name))
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

    def _accuracy_only(self, precision: str, keep: tuple[str, ...]) -> Accuracy | None:
        """Accuracy of a variant, built in a throwaway folder and not listed as a candidate."""
        folder = self.workdir / "probe"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            return self._measure(precision, keep, folder)[1]
        except ModelkilnError:
            return None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def table(self) -> list[dict[str, Any]]:
        return [c.row() for c in self.candidates]


@dataclass
class SearchResult:
    search: Search
    chosen: Candidate
    kept_best: bool = False  # chosen by --keep-best although it misses the budget

    def adopt(self, stage: Path) -> BackendSection:
        """Move the chosen candidate's files into the artifact's staging folder."""
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
    prepared: Prepared,
    out: Path,
    target: Target,
    backend: Backend,
    precisions: Sequence[str],
    budget: Budget,
    keep_best: bool,
    evaluation: Evaluation,
    progress: Progress,
) -> SearchResult:
    """Build every precision in `precisions`, keep the fastest that meets `budget`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{out.name}-candidates-", dir=out.parent))
    say = (
        (lambda m: progress.console.print(m, style="dim", markup=False, soft_wrap=True))
        if not progress.quiet
        else (lambda _m: None)
    )
    search = Search(prepared, target, backend, evaluation, budget, workdir, say)
    try:
        with progress.stage("search", f"trying precisions for target {target.name}"):
            best = search.run(precisions, quantizable_nodes(prepared.model))
        kept_best = False
        if best is None and keep_best:
            best, kept_best = search.closest(), True
        if best is None:
            closest = search.closest()
            hint = f"; closest: {closest.label} ({accuracy_text(closest)})" if closest else ""
            raise ValidationError(
                f"no precision of target {target.name} meets the budget "
                f"({budget.text()}){hint}; nothing was written "
                "(--keep-best writes the closest)",
                {
                    "failures": [
                        f"{c.label}: {'; '.join(c.misses) or c.error}" for c in search.candidates
                    ],
                    "candidates": search.table(),
                },
            )
        if not progress.quiet:
            progress.console.print(
                table_text(search.candidates, best), markup=False, soft_wrap=True
            )
        return SearchResult(search, best, kept_best)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
