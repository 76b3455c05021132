"""The markdown `benchmarks/minilm.py` writes: subjects' medians and minima, fraction of the
machine's peak, export wall times against the peers' tools, accuracy of the reduced
precisions, and the issue's targets checked against the figures."""

from __future__ import annotations

from typing import Any

from flops import bert_forward_flops, fraction_of_peak, peak_kind

from modelkiln.benchmark.report import markdown_table, subject_label

COLUMNS_NOTE = (
    "p50: median of every timed run; min ms: the fastest single run (the report also keeps "
    "each round's median and minimum); p90/p99: percentiles, milliseconds per call with the "
    "whole batch; items/s: sentences per second; round spread: ± half the range of the "
    "per-round medians; peak MB: resident memory the subject added, at its highest during "
    "its first run at that size; vs PyTorch: PyTorch p50 / subject p50 (above 1: faster)."
)


def subject_kind(subject: dict[str, Any]) -> str:
    """The peak a subject is held to, from its precision and what its runtime reports."""
    compiled = subject.get("compiled") or (subject.get("backend_info") or {}).get("compiled")
    runs_as = (compiled or {}).get("inference_precision")
    runs_as = {"f32": "fp32", "f16": "fp16"}.get(str(runs_as).lower(), runs_as)
    precision = subject.get("precision") if subject["kind"] == "artifact" else "fp32"
    return peak_kind(precision, runs_as)


def efficiency(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per subject and configuration: FLOPs per run, achieved GFLOP/s at the median and
    the minimum, and their fraction of the peak of the subject's kind (fp32 or int8)."""
    report, config, peak = results["bench"], results.get("model_config"), results.get("peak")
    if not config:
        return []
    kinds = (peak or {}).get("kinds", {})
    subjects = {s["id"]: s for s in report["subjects"]}
    rows = []
    for r in report["results"]:
        kind = subject_kind(subjects[r["subject"]])
        flops = bert_forward_flops(config, r["batch"], r["sequence"])
        p50_s, min_s = r["latency_ms"]["p50"] / 1000, r["latency_ms"]["min"] / 1000
        top = kinds.get(kind, {}).get("peak")
        rows.append(
            {
                "subject": r["subject"],
                "batch": r["batch"],
                "sequence": r["sequence"],
                "gflop": round(flops / 1e9, 3),
                "gflops_p50": round(flops / p50_s / 1e9, 1),
                "gflops_min": round(flops / min_s / 1e9, 1),
                "peak_kind": kind,
                "peak": top,
                "fraction_p50": _round(fraction_of_peak(flops, p50_s, top)),
                "fraction_min": _round(fraction_of_peak(flops, min_s, top)),
            }
        )
    return rows


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


def header(results: dict[str, Any]) -> list[str]:
    report = results["bench"]
    m, s = report["machine"], report["settings"]
    versions = m["versions"]
    return [
        "# all-MiniLM-L6-v2: artifacts vs PyTorch and the strongest peers",
        "",
        f"Measured by `benchmarks/minilm.py` on {results['date'][:10]}: {m['cpu_model']} "
        f"({m['usable_cores']} usable cores, no GPU), {m['platform']}, Python {m['python']}, "
        f"torch {versions['torch']}, onnxruntime {versions['onnxruntime']}; "
        f"{s['threads']} threads for every subject, {s['rounds']} interleaved rounds, "
        f"{s['min_time_s']:g} s measured per configuration after {s['warmup']} warm-up run(s); "
        f"attention masks all ones; other processes used {s['other_processes_cpu_cores']} "
        "cores on average meanwhile.",
    ]


def peers_section(results: dict[str, Any]) -> list[str]:
    peers = results.get("peers") or {}
    if not peers:
        return []
    lines = ["", "Peers (plain ONNX graphs, run by ONNX Runtime with ORT_ENABLE_ALL):", ""]
    for name, p in peers.items():
        if "path" in p and "error" not in p:
            diff = p.get("max_abs_diff")
            lines.append(
                f"- `{name}`: {p['tool']}; built in {p['wall_s']:.1f} s; max abs diff vs "
                f"PyTorch {diff:g} (batch 2 × 16 tokens)"
            )
        else:
            why = p.get("skipped") or p.get("error")
            lines.append(f"- `{name}`: not benchmarked: {why}")
    return lines


def peak_section(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    peak = results.get("peak")
    if not peak:
        return []
    if "error" in peak:
        return ["", f"Peak not measured: {peak['error']}."]
    kinds = peak["kinds"]
    described = "; ".join(
        f"{k} {v['peak']:.0f} {v['unit']} (median of {peak['trials']} trials {v['median']:.0f})"
        if "peak" in v
        else f"{k} not measured ({v['skipped']})"
        for k, v in kinds.items()
    )
    lines = [
        "",
        f"Machine peak (`benchmarks/peak.py`, {peak['threads']} threads, best of "
        f"{peak['trials']} × {peak['seconds']:g} s): {described}. fp32: `vfmadd231ps` ymm; "
        "int8: `vpmaddubsw` + `vpmaddwd` (AVX2 u8×s8, 2 OP per multiply-add); int8-vnni: "
        "`vpdpbusd` zmm, shown for reference (ONNX Runtime's int8 GEMM uses it where the CPU "
        "has it, so an int8 subject can pass 100% of the AVX2 int8 peak).",
    ]
    if not rows:
        return lines
    lines += [
        "",
        "Fraction of peak: BERT encoder FLOPs per run (per layer 2·B·S·(4·H² + 2·H·I) for "
        "the projections + 2·2·B·S²·H for attention scores and context; embeddings, norms, "
        "softmax, GELU not counted) / latency / peak of the subject's kind (int8 for "
        "int8-dynamic/int8-static artifacts, bf16 where the runtime reports bf16 inference, "
        "fp32 for everything else; OpenVINO may quantize the activations of weight-only "
        "int8 models at run time, which then pass 100% of the fp32 peak):",
        "",
        "| subject | batch | seq | GFLOP/run | GFLOP/s (p50) | % of peak (p50) | "
        "% of peak (min) | peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {subject_label(results['bench'], r['subject'])} | {r['batch']} | "
            f"{r['sequence']} | {r['gflop']:.2f} | {r['gflops_p50']:.1f} | "
            f"{_pct(r['fraction_p50'])} | {_pct(r['fraction_min'])} | {r['peak_kind']} |"
        )
    return lines


def export_section(results: dict[str, Any]) -> list[str]:
    exports = results["exports"]
    lines: list[str] = []
    if exports:
        stages = list(dict.fromkeys(k for e in exports.values() for k in e["stages"]))
        head = ["target", *stages, "stages total", "wall", "size MB"]
        lines += [
            "",
            "Export (`kiln export --target TARGET --json --no-cache`, one run each, seconds):",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for target, e in exports.items():
            cells = [f"{e['stages'].get(k, 0.0):.1f}" for k in stages]
            cells += [
                f"{e['stages_total']:.1f}",
                f"{e['wall']:.1f}",
                f"{e['size_bytes'] / 1e6:.1f}",
            ]
            lines.append("| " + " | ".join([target, *cells]) + " |")
    built = {n: p for n, p in (results.get("peers") or {}).items() if "wall_s" in p}
    if built:
        lines += [
            "",
            "Peer builds (one run each, wall seconds of the subprocess, imports included):",
            "",
            "| peer | steps | wall |",
            "|---|---|---|",
        ]
        for name, p in built.items():
            steps = "; ".join(f"{k} {v:.1f}" for k, v in (p.get("stages") or {}).items())
            lines.append(f"| {name} | {steps} | {p['wall_s']:.1f} |")
    return lines


def accuracy_section(results: dict[str, Any]) -> list[str]:
    measured = {t: e for t, e in results["exports"].items() if e.get("accuracy")}
    if not measured:
        return []
    lines = [
        "",
        "Accuracy of the reduced-precision artifacts: sentence embeddings (mean-pooled, "
        "each text alone) against fp32 PyTorch on `samples/minilm/evaluation.txt`:",
        "",
        "| target | precision | min cosine | mean cosine | worst sentence |",
        "|---|---|---|---|---|",
    ]
    for target, e in measured.items():
        acc = e["accuracy"]
        worst = (acc.get("worst") or [{}])[0].get("name", "")
        lines.append(
            f"| {target} | {e['precision']} | {acc['cosine']['min']:.4f} | "
            f"{acc['cosine']['mean']:.4f} | {worst.replace('|', '/')} |"
        )
    for target, e in measured.items():
        rows = e["accuracy"].get("candidates")
        if not rows:
            continue
        lines += [
            "",
            f"`--precision auto` candidates of `{target}` (latency: median of 10 runs at "
            "batch 1 × 128 during the export):",
            "",
            "| candidate | latency ms | size MB | min cosine | budget |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            verdict = (
                "chosen"
                if row["candidate"] == e["accuracy"]["chosen"]
                else ("pass" if row["passed"] else "fail")
            )
            latency = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.2f}"
            size = "-" if row["size_bytes"] is None else f"{row['size_bytes'] / 1e6:.1f}"
            cos = "-" if row["cosine_min"] is None else f"{row['cosine_min']:.4f}"
            lines.append(f"| {row['candidate']} | {latency} | {size} | {cos} | {verdict} |")
    return lines


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, measured: kiln `cpu` vs the best ORT peer, int8-class artifacts
    vs the fp32 artifact of their backend and PyTorch, cold export vs optimum-cli."""
    report = results["bench"]
    subjects = {s["id"]: s for s in report["subjects"]}
    p50: dict[tuple[str, int, int], float] = {
        (r["subject"], r["batch"], r["sequence"]): r["latency_ms"]["p50"] for r in report["results"]
    }
    configs = sorted({(b, s) for _, b, s in p50})
    cpu = next((i for i, s in subjects.items() if s.get("target") == "cpu"), None)
    peers = [i for i, s in subjects.items() if s["kind"] == "peer"]
    rows: list[dict[str, Any]] = []
    if cpu and peers:
        for b, s in configs:
            best = min(peers, key=lambda i: p50.get((i, b, s), float("inf")))
            ours, theirs = p50.get((cpu, b, s)), p50.get((best, b, s))
            if ours and theirs:
                rows.append(
                    {
                        "check": f"kiln cpu p50 ≤ best ORT peer ({best}), batch {b} × {s}",
                        "measured": f"{ours:.2f} ms vs {theirs:.2f} ms",
                        "passed": ours <= theirs,
                    }
                )
    accuracy = {t: e.get("accuracy") for t, e in results["exports"].items()}
    fp32 = {}  # backend -> its fp32 artifact, `cpu` first for ONNX Runtime
    for i, sub in sorted(subjects.items(), key=lambda kv: kv[1].get("target") != "cpu"):
        if sub["kind"] == "artifact" and sub.get("precision") == "fp32":
            fp32.setdefault(sub["backend"], i)
    for i, sub in subjects.items():
        if sub["kind"] != "artifact" or peak_kind(sub.get("precision")) != "int8":
            continue
        acc = accuracy.get(sub.get("target"))
        cosine = acc["cosine"]["min"] if acc else None
        rows.append(
            {
                "check": f"{i}: min cosine ≥ 0.99",
                "measured": "not measured" if cosine is None else f"{cosine:.4f}",
                "passed": cosine is not None and cosine >= 0.99,
            }
        )
        for b, s in configs:
            mine = p50.get((i, b, s))
            same = fp32.get(sub["backend"])
            pairs = ((same, f"fp32 artifact {same}", 1.5), ("pytorch", "PyTorch", 2.5))
            for other, label, need in pairs:
                theirs = p50.get((other, b, s)) if other else None
                if mine and theirs:
                    rows.append(
                        {
                            "check": f"{i} ≥ {need}× {label}, batch {b} × {s}",
                            "measured": f"{theirs / mine:.2f}×",
                            "passed": theirs / mine >= need,
                        }
                    )
    kiln = results["exports"].get("cpu", {}).get("wall")
    optimum = (results.get("peers") or {}).get("optimum-O2", {}).get("export_wall_s")
    if kiln is not None:
        limit, what = (optimum, "optimum-cli export onnx") if optimum else (13.0, "13 s")
        rows.append(
            {
                "check": f"cold kiln export (cpu) ≤ {what}",
                "measured": f"{kiln:.1f} s vs {limit:.1f} s",
                "passed": kiln <= limit,
            }
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    report = results["bench"]
    rows = efficiency(results)
    lines = header(results) + ["", markdown_table(report), "", COLUMNS_NOTE]
    lines += [f"Note: {n}" for n in report["notes"]]
    for sub in report["subjects"]:
        ran = ((sub.get("backend_info") or {}).get("compiled") or {}).get("inference_precision")
        half = sub.get("precision") in ("fp16", "bf16")
        if ran and half and not _same_precision(ran, sub["precision"]):
            lines.append(
                f"\nNote: `{sub['id']}` asks for {sub['precision']}, but its compiled model "
                f"reports inference precision {ran} (this CPU lacks {sub['precision']} "
                "instructions), so its figures are those of that precision."
            )
    lines += peers_section(results)
    lines += [
        "",
        "Load: "
        + "; ".join(
            f"{sub['id']} {sub['load_s']:.2f} s (+{sub['load_rss_mb']:.0f} MB)"
            for sub in report["subjects"]
        )
        + " (library imports not included).",
    ]
    lines += peak_section(results, rows)
    lines += export_section(results)
    lines += accuracy_section(results)
    checked = checks(results)
    if checked:
        lines += ["", "Targets of the issue, on these figures:", "", "| check | measured | |"]
        lines.append("|---|---|---|")
        for c in checked:
            lines.append(f"| {c['check']} | {c['measured']} | {'yes' if c['passed'] else 'NO'} |")
    for target, reason in results["skipped_targets"].items():
        lines.append(f"\nTarget `{target}` not measured: {reason}")
    return "\n".join(lines) + "\n"


def _same_precision(reported: str, requested: str) -> bool:
    def norm(name: str) -> str:  # OpenVINO says f32/f16 where targets say fp32/fp16
        return {"f32": "fp32", "f16": "fp16"}.get(name.lower(), name.lower())

    return norm(reported) == norm(requested)
