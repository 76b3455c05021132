"""`kiln bench` on text-generation artifacts: time to first token and decode speed, side by
side with PyTorch's `generate` on the same prompts, in interleaved rounds.

Every subject gets the same prompts (random token ids, no padding) and makes exactly
`new_tokens` tokens (no early stop). Time to first token is the prefill plus choosing one
token; decode speed counts the tokens after the first per second of wall time (all rows of
the batch: batch x (new_tokens - 1) / time).
"""

from __future__ import annotations

import datetime as _dt
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelkiln.artifact import Artifact
from modelkiln.benchmark.measure import OtherLoad, machine_info, usable_cores
from modelkiln.errors import UserInputError
from modelkiln.generation import check_room
from modelkiln.runtime import load

SCHEMA = "modelkiln.bench.generate/1"
BASELINE_ID = "pytorch"
DEFAULT_BATCH = (1, 8)
DEFAULT_PROMPT = 128
DEFAULT_NEW_TOKENS = 64
FIELDS = {
    "ttft_ms": "milliseconds from the call to the first new token (prefill + one token): "
    "median and minimum over the rounds",
    "decode_tokens_per_s": "tokens after the first, all rows, per second: median and maximum "
    "over the rounds",
    "ms_per_token": "milliseconds per decode step (one token per row), median over rounds",
    "decode_speedup": "subject's median decode tokens/s / PyTorch's, same batch",
    "ttft_speedup": "PyTorch's median time to first token / the subject's",
}

# One generation: (prompts [batch, prompt], new tokens) -> per-token wall times after the call.
Generator = Callable[[np.ndarray, int], list[float]]


@dataclass
class Subject:
    id: str
    info: dict[str, Any]
    generate: Generator
    runs: dict[int, list[tuple[float, float, float]]] = field(default_factory=dict)


def _session_generator(session: Any) -> Generator:
    def run(prompts: np.ndarray, new: int) -> list[float]:
        times: list[float] = []
        session.generate(
            prompts,
            np.ones_like(prompts),
            max_new_tokens=new,
            eos_token_id=[],
            streamer=lambda _token: times.append(time.perf_counter()),
        )
        return times

    return run


def _torch_generator(model: Any, pad: int) -> Generator:
    import torch
    from transformers import GenerationConfig

    from modelkiln.exporter.decoder import plain_greedy  # the exporter: only with --baseline

    class Stamps:  # transformers' streamer protocol: put(prompt) first, then every token
        def __init__(self) -> None:
            self.times: list[float] = []
            self.seen_prompt = False

        def put(self, _value: Any) -> None:
            if self.seen_prompt:
                self.times.append(time.perf_counter())
            self.seen_prompt = True

        def end(self) -> None:
            pass

    def run(prompts: np.ndarray, new: int) -> list[float]:
        stamps = Stamps()
        config = GenerationConfig(
            do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=pad
        )
        ids = torch.from_numpy(prompts)
        with torch.inference_mode(), plain_greedy(model, config):
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                streamer=stamps,
            )
        return stamps.times

    return run


def bench_generation(
    artifacts: Sequence[Artifact],
    labels: Sequence[str],
    *,
    baseline: str | None,
    batch: Sequence[int] | None,
    prompt_tokens: int | None,
    new_tokens: int | None,
    threads: int | None,
    warmup: int,
    rounds: int,
    seed: int,
    allow_pickle: bool,
    stock_architecture: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    batches = tuple(batch or DEFAULT_BATCH)
    new = int(new_tokens or DEFAULT_NEW_TOKENS)
    if new < 2:
        raise UserInputError(f"--new-tokens {new}: give at least 2 (decode speed needs two)")
    threads = threads or usable_cores()
    first = artifacts[0].manifest
    assert first.decoder is not None
    limit = first.decoder.max_positions
    room = (limit or DEFAULT_PROMPT + new) - new + 1  # the last token is not fed back
    prompt = int(prompt_tokens or min(DEFAULT_PROMPT, room))
    if prompt < 1:
        raise UserInputError(
            f"--new-tokens {new} leaves no room for a prompt in the model's {limit} positions"
        )
    check_room(prompt, new, limit, "--seq / --new-tokens")
    vocab = int(first.input_values["input_ids"].high)
    rng = np.random.default_rng(seed)
    prompts = {b: rng.integers(3, vocab, size=(b, prompt), dtype=np.int64) for b in batches}
    subjects: list[Subject] = []
    if baseline is not None:
        subjects.append(_baseline(baseline, first, threads, allow_pickle, stock_architecture, say))
    for art, label in zip(artifacts, labels, strict=True):
        say(f"loading {label}")
        session = load(art.path, threads=threads)
        info = {
            "id": label,
            "kind": "artifact",
            "target": art.manifest.target.name,
            "backend": art.backend,
            "precision": art.manifest.precision,
            "threads": threads,
        }
        subjects.append(Subject(label, info, _session_generator(session)))
    say(f"warming up ({max(warmup, 1)} generation(s) per subject and batch)")
    for subject in subjects:
        for b in batches:
            for _ in range(max(warmup, 1)):
                subject.generate(prompts[b], 4)
    order = [(s, b) for s in subjects for b in batches]
    shuffle = random.Random(seed)
    other_load = OtherLoad()
    other_load.start()
    for r in range(rounds):
        shuffle.shuffle(order)
        for subject, b in order:
            start = time.perf_counter()
            stamps = subject.generate(prompts[b], new)
            if len(stamps) != new:
                raise UserInputError(f"{subject.id} made {len(stamps)} tokens, not {new}")
            ttft = stamps[0] - start
            decode = stamps[-1] - stamps[0]
            subject.runs.setdefault(b, []).append((ttft, decode, b * (new - 1) / decode))
        say(f"round {r + 1}/{rounds}")
    others = other_load.stop()
    results = [_row(s, b, prompt, new) for s in subjects for b in batches]
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "threads": threads,
            "rounds": rounds,
            "warmup": max(warmup, 1),
            "batch": list(batches),
            "prompt_tokens": prompt,
            "new_tokens": new,
            "seed": seed,
            "other_processes_cpu_cores": others,
        },
        "subjects": [s.info for s in subjects],
        "results": results,
        "comparisons": _comparisons(results) if baseline is not None else [],
        "notes": [],
        "fields": FIELDS,
    }


def _baseline(
    checkpoint: str,
    manifest: Any,
    threads: int,
    allow_pickle: bool,
    stock_architecture: bool,
    say: Callable[[str], None],
) -> Subject:
    say(f"loading baseline {checkpoint} (PyTorch)")
    try:
        import torch

        from modelkiln.exporter import sources
        from modelkiln.prepare import model_for  # the exporter: only with --baseline
    except ImportError as exc:
        raise UserInputError(
            f"--baseline needs PyTorch ({exc}): pip install 'modelkiln[export]'"
        ) from None
    torch.set_num_threads(threads)
    stock = stock_architecture or manifest.source.stock_architecture
    source = sources.load(checkpoint, allow_pickle=allow_pickle, stock_architecture=stock)
    spec, model, _ = model_for(source, "text-generation")
    if spec.decoder is None:
        raise UserInputError(f"--baseline {checkpoint} is not a text-generation checkpoint")
    info = {
        "id": BASELINE_ID,
        "kind": "baseline",
        "checkpoint": checkpoint,
        "runtime": "PyTorch eager generate() (torch.inference_mode, greedy)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return Subject(BASELINE_ID, info, _torch_generator(model, spec.decoder.pad_token_id))


def _row(subject: Subject, batch: int, prompt: int, new: int) -> dict[str, Any]:
    runs = subject.runs[batch]
    ttft = [r[0] * 1000 for r in runs]
    rate = [r[2] for r in runs]
    step = [r[1] / (new - 1) * 1000 for r in runs]
    return {
        "subject": subject.id,
        "batch": batch,
        "prompt_tokens": prompt,
        "new_tokens": new,
        "ttft_ms": {"p50": _r(statistics.median(ttft)), "min": _r(min(ttft))},
        "decode_tokens_per_s": {"p50": _r(statistics.median(rate)), "max": _r(max(rate))},
        "ms_per_token": _r(statistics.median(step)),
        "rounds": {"ttft_ms": [_r(t) for t in ttft], "decode_tokens_per_s": [_r(v) for v in rate]},
    }


def _comparisons(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = {r["batch"]: r for r in results if r["subject"] == BASELINE_ID}
    rows = []
    for r in results:
        theirs = base.get(r["batch"])
        if r["subject"] == BASELINE_ID or theirs is None:
            continue
        rows.append(
            {
                "subject": r["subject"],
                "baseline": BASELINE_ID,
                "batch": r["batch"],
                "decode_speedup": _r(
                    r["decode_tokens_per_s"]["p50"] / theirs["decode_tokens_per_s"]["p50"]
                ),
                "ttft_speedup": _r(theirs["ttft_ms"]["p50"] / r["ttft_ms"]["p50"]),
            }
        )
    return rows


def _cells(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    speedups = {(c["subject"], c["batch"]): c for c in report["comparisons"]}
    head = ["subject", "batch", "prompt", "new", "TTFT ms", "decode tok/s", "ms/token"]
    if report["comparisons"]:
        head += ["decode vs PyTorch", "TTFT vs PyTorch"]
    rows = []
    for r in report["results"]:
        row = [
            r["subject"],
            str(r["batch"]),
            str(r["prompt_tokens"]),
            str(r["new_tokens"]),
            f"{r['ttft_ms']['p50']:.1f}",
            f"{r['decode_tokens_per_s']['p50']:.1f}",
            f"{r['ms_per_token']:.2f}",
        ]
        if report["comparisons"]:
            c = speedups.get((r["subject"], r["batch"]))
            row += ["" if c is None else f"{c['decode_speedup']:.2f}×"]
            row += ["" if c is None else f"{c['ttft_speedup']:.2f}×"]
        rows.append(row)
    return head, rows


def text_table(report: dict[str, Any]) -> str:
    head, rows = _cells(report)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    settings = report["settings"]
    lines = [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows), ""]
    lines.append(
        f"{settings['rounds']} interleaved rounds, {settings['threads']} threads, greedy, "
        f"{settings['new_tokens']} new tokens per row after a {settings['prompt_tokens']}-token "
        "prompt; TTFT: prefill + first token; decode tok/s: all rows, tokens after the first"
    )
    return "\n".join(lines)


def markdown_table(report: dict[str, Any]) -> str:
    head, rows = _cells(report)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _r(x: float) -> float:
    return round(float(x), 3)
