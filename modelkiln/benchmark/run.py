"""`kiln bench` / `modelkiln.bench()`: latency, throughput and memory of artifacts, side by
side with the PyTorch model they came from.

Fairness, in one process and one run:

- Feeds are generated once per size from the first artifact's manifest (token ids inside
  the vocabulary, attention masks of ones, images of the declared size) before anything is
  loaded; the baseline gets the very same arrays.
- Every subject runs with the same number of intra-op threads (`threads`, default: the
  cores this process may use): ONNX Runtime through `load(..., threads=)`, PyTorch through
  `torch.set_num_threads`.
- Configurations are measured in interleaved rounds (see `modelkiln.benchmark.measure`), so
  noise on the machine hits all of them, and the spread between rounds is reported.

Order of work: check everything that can be wrong (paths, backends, sizes) before loading
anything; generate feeds; load the baseline (PyTorch is imported only then, and only when a
baseline is given), then each artifact, each followed by one run per configuration in
ascending size (its peak memory; this run counts as the first warm-up); the remaining
warm-up runs; the measured rounds. Library imports are timed apart from loading (`import_s`)
so `load_s` is the model's own load time.

The returned dict is what `kiln bench --json` writes; `modelkiln.benchmark.report` renders it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import modelkiln.benchmark.peers as peers_mod
import modelkiln.benchmark.plan as plan
import modelkiln.benchmark.subjects as subjects_mod
from modelkiln.artifact import Artifact
from modelkiln.benchmark.generation import bench_generation
from modelkiln.benchmark.measure import (
    Config,
    OtherLoad,
    PeakMeter,
    machine_info,
    mb,
    measure,
    rss,
    summarize,
    usable_cores,
    warm_up,
)
from modelkiln.benchmark.subjects import BASELINE_ID, OPENVINO_DIRECT_ID
from modelkiln.errors import UserInputError

SCHEMA = "modelkiln.bench/1"
BUSY_CORES = 0.2  # other processes' average CPU use above which the report warns
FIELDS = {
    "latency_ms": "milliseconds per run (one call with a whole batch), percentiles over every "
    "timed run of every round; min is the fastest single run of all rounds",
    "throughput_items_per_s": "batch rows per second: batch × runs / total time of the runs",
    "rounds": "per round: median latency (p50_ms), fastest run (min_ms) and runs; spread: "
    "(max - min) / median of the round medians, in percent",
    "peak_rss_mb": "highest resident memory of the process during the first run of this "
    "configuration, minus the resident memory before its subject was loaded (MiB); Linux "
    "VmHWM, reset before each step. Approximate: allocators reuse memory freed by others",
    "load_s": "seconds to load the model (libraries already imported; see import_s)",
    "load_rss_mb": "resident memory added by loading the model (MiB)",
    "process_rss_mb": "resident memory of the whole process at the end, everything loaded",
    "speedup_p50": "baseline p50 latency / artifact p50 latency (above 1: artifact faster)",
    "throughput_ratio": "artifact throughput / baseline throughput",
    "other_processes_cpu_cores": "average CPU use of other processes during the measured "
    "rounds, in cores (/proc/stat busy time minus this process's CPU time, per wall second)",
    "max_abs_diff": "largest absolute difference between artifact and baseline outputs on the "
    "first configuration (a check that the baseline is the same model)",
}


@dataclass
class _Subject:
    id: str
    info: dict[str, Any]
    dims: list[dict[str, int]]
    feeds: list[dict[str, np.ndarray]]
    run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    configs: list[Config] = field(default_factory=list)


def bench(
    artifacts: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    baseline: str | None = None,
    batch: Sequence[int] | None = None,
    seq: Sequence[int] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    threads: int | None = None,
    warmup: int = 2,
    rounds: int = 5,
    min_time: float = 3.0,
    seed: int = 0,
    allow_pickle: bool = False,
    stock_architecture: bool = False,
    vs_openvino: bool = False,
    peers: Mapping[str, str | os.PathLike[str]] | None = None,
    new_tokens: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure each artifact (and `baseline`, a checkpoint run in PyTorch eager) at every
    combination of `batch` and `seq` sizes; returns the report `kiln bench --json` writes.

    `min_time` is the measured time per configuration, split over `rounds`; `warmup` untimed
    runs per configuration come first (at least one). Only the ONNX Runtime and numpy are
    imported unless `baseline` is given; `allow_pickle` and `stock_architecture` are for
    the baseline checkpoint, as for `kiln export`. `vs_openvino` adds the baseline converted by
    OpenVINO itself (`ov.convert_model`, default settings) as one more subject, so an
    OpenVINO artifact can be compared with OpenVINO's own route in the same run. `peers`
    maps names to plain `.onnx` graphs made by other tools, each run by ONNX Runtime
    (ORT_ENABLE_ALL) on the first artifact's feeds (`modelkiln.benchmark.peers`).

    Text-generation artifacts are measured by generating instead
    (`modelkiln.benchmark.generation`): `seq` is the prompt length (one), `new_tokens` the
    tokens per row, and the report has the schema `modelkiln.bench.generate/1`.
    """
    if isinstance(artifacts, str | os.PathLike):
        artifacts = [artifacts]
    say = progress or (lambda _msg: None)
    subjects_mod.check_numbers(threads, warmup, rounds, min_time)
    if not artifacts:
        raise UserInputError("give at least one artifact to bench")
    opened = [Artifact.open(p) for p in artifacts]
    labels = [str(p) for p in artifacts]
    import_s = {
        label: subjects_mod.prepare_backend(a, label)
        for a, label in zip(opened, labels, strict=True)
    }
    if baseline is not None:
        subjects_mod.check_checkpoint(baseline)
    elif vs_openvino:
        raise UserInputError("--vs-openvino needs --baseline: the checkpoint OpenVINO converts")
    peer_paths = peers_mod.check_peers(peers or {}, [*labels, BASELINE_ID, OPENVINO_DIRECT_ID])
    decoders = [a.manifest.decoder is not None for a in opened]
    if any(decoders):
        if not all(decoders):
            raise UserInputError(
                "kiln bench measures text-generation artifacts (tokens/s) or others (latency), "
                "not both in one run"
            )
        if seq is not None and len(seq) > 1:
            raise UserInputError("--seq takes one prompt length for text-generation artifacts")
        if vs_openvino or shapes or peer_paths:
            raise UserInputError(
                "--vs-openvino, --peer and --shape do not apply to text-generation artifacts"
            )
        return bench_generation(
            opened,
            labels,
            baseline=baseline,
            batch=batch,
            prompt_tokens=seq[0] if seq else None,
            new_tokens=new_tokens,
            threads=threads,
            warmup=warmup,
            rounds=rounds,
            seed=seed,
            allow_pickle=allow_pickle,
            stock_architecture=stock_architecture,
            say=say,
        )
    if new_tokens is not None:
        raise UserInputError("--new-tokens applies to text-generation artifacts only")
    if seq is not None:
        plan.check_seq_used((lb, a.inputs) for lb, a in zip(labels, opened, strict=True))
    threads = threads or usable_cores()
    notes: list[str] = []
    subjects = []
    for art, label in zip(opened, labels, strict=True):
        dims = plan.plan_dims(
            label, art.inputs, batch, seq, shapes or {}, art.manifest.limits.get(plan.SEQUENCE)
        )
        decls, guessed = plan.bench_decls(art.inputs, art.manifest.input_values)
        notes += [f"{label}: {n}" for n in guessed]
        feeds = [plan.make_feeds(decls, d, seed) for d in dims]
        subjects.append(
            _Subject(label, subjects_mod.artifact_info(art, label, import_s[label]), dims, feeds)
        )

    meter = PeakMeter()
    if baseline is not None:
        first = subjects[0]
        base = _Subject(BASELINE_ID, {}, first.dims, first.feeds)
        say(f"loading baseline {baseline} (PyTorch)")
        base.info, base.run, model = subjects_mod.load_baseline(
            baseline, opened[0], first.id, threads, allow_pickle, stock_architecture, meter
        )
        _probe(base, meter, say)
        artifacts_only = list(subjects)
        subjects.insert(0, base)
        if vs_openvino:
            direct = _Subject(OPENVINO_DIRECT_ID, {}, first.dims, first.feeds)
            say(f"converting {baseline} with OpenVINO (ov.convert_model)")
            direct.info, direct.run = subjects_mod.load_openvino_direct(
                baseline,
                model,
                list(opened[0].outputs),
                first.feeds[0],
                threads,
                meter,
            )
            _probe(direct, meter, say)
            subjects.insert(1, direct)
        del model
    else:
        artifacts_only = list(subjects)
    first = artifacts_only[0]
    for name, path in peer_paths.items():
        peer = _Subject(name, {}, first.dims, first.feeds)
        say(f"loading peer {name} ({path}, onnxruntime)")
        peer.info, peer.run = peers_mod.load_peer(name, path, first.feeds[0], threads, meter)
        _probe(peer, meter, say)
        subjects.insert(len(subjects) - len(artifacts_only), peer)
    for subject, art in zip(artifacts_only, opened, strict=True):
        say(f"loading {subject.id}")
        subject.run, stats = subjects_mod.load_artifact(art, subject.id, threads, meter)
        subject.info |= stats
        _probe(subject, meter, say)

    configs = [c for s in subjects for c in s.configs]
    if warmup > 1:
        warm_up(configs, warmup - 1, say)
    say(f"measuring {len(configs)} configurations in {rounds} interleaved rounds")
    other_load = OtherLoad()
    other_load.start()
    wall = measure(configs, rounds, min_time, seed, say)
    others = other_load.stop()
    if others is not None and others >= BUSY_CORES:
        notes.append(
            f"other processes kept {others:.2f} of {usable_cores()} cores busy on average "
            "while this measured; the figures are slower and noisier than on a quiet machine"
        )

    results = []
    for config in configs:
        row: dict[str, Any] = {
            "subject": config.subject,
            "dims": dict(config.dims),
            "batch": config.dims.get(plan.BATCH),
            "sequence": config.dims.get(plan.SEQUENCE),
        }
        results.append(row | summarize(config))
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "threads": threads,
            "warmup": max(warmup, 1),
            "rounds": rounds,
            "min_time_s": min_time,
            "batch": sorted({d.get(plan.BATCH, 1) for s in subjects for d in s.dims}),
            "sequence": sorted(
                {d[plan.SEQUENCE] for s in subjects for d in s.dims if plan.SEQUENCE in d}
            ),
            "shapes": {k: list(v) for k, v in (shapes or {}).items()},
            "seed": seed,
            "attention_mask": "all ones",
            "measured_wall_s": round(wall, 2),
            "peak_method": meter.method,
            "other_processes_cpu_cores": others,
        },
        "subjects": [s.info for s in subjects],
        "results": results,
        "comparisons": _comparisons(subjects, results) if baseline is not None else [],
        "process_rss_mb": mb(rss()),
        "notes": notes,
        "fields": FIELDS,
    }


def _probe(subject: _Subject, meter: PeakMeter, say: Callable[[str], None]) -> None:
    """First run of each configuration, smallest first: peak memory, and outputs of the
    first configuration for comparing with the baseline."""
    assert subject.run is not None
    base = int(subject.info.pop("_base"))
    order = sorted(range(len(subject.dims)), key=lambda i: np.prod(list(subject.dims[i].values())))
    for i in order:
        config = Config(
            subject.id,
            subject.dims[i],
            plan.items_per_run(subject.dims[i]),
            functools.partial(subject.run, subject.feeds[i]),
        )
        meter.start()
        outputs = config.run()
        peak = meter.peak_since_start()
        config.peak_rss = None if peak is None else peak - base
        if i == 0:
            config.first_outputs = outputs
        subject.configs.append(config)
    subject.configs.sort(key=lambda c: subject.dims.index(c.dims))
    say(f"  {subject.id}: loaded in {subject.info['load_s']:.2f}s")


def _comparisons(subjects: list[_Subject], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {(r["subject"], plan.dims_label(r["dims"])): r for r in results}
    base = subjects[0]
    reference = base.configs[0].first_outputs
    rows = []
    for subject in subjects[1:]:
        diff = _max_abs_diff(reference, subject.configs[0].first_outputs)
        same_feeds = (
            bool(subject.dims)
            and subject.dims[0] == base.dims[0]
            and subject.feeds[0].keys() == base.feeds[0].keys()
            and all(np.array_equal(v, base.feeds[0][k]) for k, v in subject.feeds[0].items())
        )
        for dims in subject.dims:
            key = plan.dims_label(dims)
            ours, theirs = by_key.get((subject.id, key)), by_key.get((BASELINE_ID, key))
            if ours is None or theirs is None:
                continue
            rows.append(
                {
                    "subject": subject.id,
                    "baseline": BASELINE_ID,
                    "dims": dict(dims),
                    "batch": dims.get(plan.BATCH),
                    "sequence": dims.get(plan.SEQUENCE),
                    "speedup_p50": round(
                        theirs["latency_ms"]["p50"] / ours["latency_ms"]["p50"], 3
                    ),
                    "throughput_ratio": round(
                        ours["throughput_items_per_s"] / theirs["throughput_items_per_s"], 3
                    ),
                    "max_abs_diff": diff if same_feeds else None,
                }
            )
    return rows


def _max_abs_diff(
    a: Mapping[str, np.ndarray] | None, b: Mapping[str, np.ndarray] | None
) -> float | None:
    if not a or not b:
        return None
    diffs = [
        float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
        for k in a
        if k in b and a[k].shape == b[k].shape and a[k].size
    ]
    return float(f"{max(diffs):.3g}") if diffs else None
