"""all-MiniLM-L6-v2: export to every available target, bench each against PyTorch.

For every built-in target (`modelkiln.targets.preset_names()`) whose backend this machine
can build for, runs `kiln export CHECKPOINT -o TMP/minilm-TARGET --target TARGET --json
--no-cache` in a subprocess (wall time and time per stage of a full export), then one
`kiln bench` over all exported artifacts with `--baseline CHECKPOINT`, in a fresh
subprocess, so every artifact and PyTorch are measured in the same process and the same
interleaved rounds. Targets whose backend is
missing, or whose export fails, are listed with the reason. New presets are picked up
without changing this script.

Writes benchmarks/results/minilm.json (machine, export times, the full bench report) and
benchmarks/results/minilm.md (the tables the README's performance section shows), and prints
the markdown.

    .venv/bin/python benchmarks/minilm.py [--batch 1,8,32] [--seq 16,128] [--rounds 5]
        [--min-time 5] [--threads N] [--targets cpu,...] [--wait-quiet S]
        [--plot FILE.png] [--checkpoint DIR]

Run it on a quiet machine: the report states how much CPU other processes used meanwhile.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    default_checkpoint,
    git_revision,
    timed,
    wait_quiet,
    write_json,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "minilm"


def kiln_command() -> list[str]:
    return [sys.executable, "-c", "from modelkiln.cli import run; run()"]


def available_targets() -> tuple[list[str], dict[str, str]]:
    """Preset names this machine can build for, and the reason for each one it cannot."""
    from modelkiln.target_status import target_status
    from modelkiln.targets import preset_names

    usable, skipped = [], {}
    for name in preset_names():
        status = target_status(name)
        if status["usable"]:
            usable.append(name)
        else:
            skipped[name] = str(status["reason"])
    return usable, skipped


def export(
    checkpoint: str, target: str, folder: Path, data: list[str] | None = None
) -> dict[str, Any]:
    """`data`: --calibration/--eval arguments, given to every target (fp32 ones ignore
    them; reduced precisions are measured against fp32 PyTorch on the evaluation part)."""
    out = folder / f"minilm-{target}"
    cmd = [*kiln_command(), "export", checkpoint, "-o", str(out), "--target", target, "--json"]
    cmd.append("--no-cache")  # time a full export: trace and passes, not a cache hit
    cmd += data or []
    wall, done = timed(cmd)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error:")]
        return {"error": (lines or done.stderr.strip().splitlines() or ["no output"])[-1]}
    summary = json.loads(done.stdout)
    stages = {k: round(float(v), 3) for k, v in summary["times"].items()}
    return {
        "artifact": out.name,
        "stages": stages,
        "stages_total": round(sum(stages.values()), 3),
        "wall": round(wall, 3),
        "size_bytes": summary["size_bytes"],
        "validation": summary["validation"],
        "precision": summary.get("precision"),
        "accuracy": summary.get("accuracy"),
    }


def bench(checkpoint: str, artifacts: list[str], folder: Path, args: argparse.Namespace) -> Any:
    report = folder / "bench.json"
    cmd = [*kiln_command(), "bench", *artifacts, "--baseline", checkpoint]
    if args.vs_openvino:
        cmd.append("--vs-openvino")
    cmd += ["--batch", args.batch, "--seq", args.seq, "--rounds", str(args.rounds)]
    cmd += ["--warmup", str(args.warmup), "--min-time", str(args.min_time), "--json", str(report)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.plot:
        cmd += ["--plot", str(args.plot.resolve())]
    done = subprocess.run(cmd, cwd=folder, stdout=subprocess.DEVNULL)  # progress on stderr
    if done.returncode != 0:
        raise SystemExit(f"kiln bench failed with exit code {done.returncode}")
    return json.loads(report.read_text()), " ".join(["kiln", *cmd[3:]])


def markdown(results: dict[str, Any]) -> str:
    from modelkiln.benchmark.report import markdown_table

    report = results["bench"]
    m, s = report["machine"], report["settings"]
    versions = m["versions"]
    lines = [
        "# all-MiniLM-L6-v2: artifacts vs PyTorch",
        "",
        f"Measured by `benchmarks/minilm.py` on {results['date'][:10]}: {m['cpu_model']} "
        f"({m['usable_cores']} usable cores, no GPU), {m['platform']}, Python {m['python']}, "
        f"torch {versions['torch']}, onnxruntime {versions['onnxruntime']}; "
        f"{s['threads']} threads for every subject, {s['rounds']} interleaved rounds, "
        f"{s['min_time_s']:g} s measured per configuration after {s['warmup']} warm-up run(s); "
        f"attention masks all ones; other processes used {s['other_processes_cpu_cores']} "
        "cores on average meanwhile.",
        "",
        markdown_table(report),
        "",
        "p50/p90/p99: milliseconds per call with the whole batch; items/s: sentences per "
        "second; round spread: ± half the range of the per-round medians; peak MB: resident "
        "memory the subject added, at its highest during its first run at that size; "
        "vs PyTorch: PyTorch p50 / artifact p50 (above 1: the artifact is faster).",
    ]
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
    lines += [
        "",
        "Load: "
        + "; ".join(
            f"{sub['id']} {sub['load_s']:.2f} s (+{sub['load_rss_mb']:.0f} MB)"
            for sub in report["subjects"]
        )
        + " (library imports not included).",
    ]
    exports = results["exports"]
    if exports:
        stages = list(dict.fromkeys(k for e in exports.values() for k in e["stages"]))
        head = ["target", *stages, "stages total", "wall", "size MB"]
        lines += [
            "",
            "Export (`kiln export --target TARGET --json --no-cache`, one run each, seconds):",
            "",
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for target, e in exports.items():
            cells = [f"{e['stages'].get(k, 0.0):.1f}" for k in stages]
            cells += [
                f"{e['stages_total']:.1f}",
                f"{e['wall']:.1f}",
                f"{e['size_bytes'] / 1e6:.1f}",
            ]
            lines.append("| " + " | ".join([target, *cells]) + " |")
    measured = {t: e for t, e in exports.items() if e.get("accuracy")}
    if measured:
        lines += [
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
    for target, reason in results["skipped_targets"].items():
        lines.append(f"\nTarget `{target}` not measured: {reason}")
    return "\n".join(lines) + "\n"


def _same_precision(reported: str, requested: str) -> bool:
    def norm(name: str) -> str:  # OpenVINO says f32/f16 where targets say fp32/fp16
        return {"f32": "fp32", "f16": "fp16"}.get(name.lower(), name.lower())

    return norm(reported) == norm(requested)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint folder (default: the MiniLM sample)")
    parser.add_argument("--targets", help="comma-separated presets (default: every available)")
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--seq", default="16,128")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before benchmarking, wait up to this long for other processes to go idle",
    )
    parser.add_argument("--plot", type=Path, default=None, help="also write this PNG")
    parser.add_argument(
        "--calibration",
        type=Path,
        default=SAMPLES / "calibration.txt",
        help="calibration texts for reduced-precision targets",
    )
    parser.add_argument(
        "--eval",
        type=Path,
        default=SAMPLES / "evaluation.txt",
        help="evaluation texts (accuracy vs fp32 PyTorch) for reduced-precision targets",
    )
    parser.add_argument(
        "--no-vs-openvino",
        dest="vs_openvino",
        action="store_false",
        help="do not bench OpenVINO's own conversion of the checkpoint beside the artifacts",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "minilm.json")
    args = parser.parse_args()

    checkpoint = args.checkpoint or default_checkpoint()
    if args.vs_openvino:
        try:
            import openvino  # noqa: F401
        except ImportError:
            args.vs_openvino = False
    targets, skipped = available_targets()
    if args.targets:
        wanted = args.targets.split(",")
        unknown = sorted(set(wanted) - set(targets) - set(skipped))
        if unknown:
            raise SystemExit(f"unknown target(s) {', '.join(unknown)}")
        skipped = {t: r for t, r in skipped.items() if t in wanted}
        targets = [t for t in targets if t in wanted]
    if not targets:
        raise SystemExit("no target can be built on this machine: " + "; ".join(skipped.values()))
    exports = {}
    with tempfile.TemporaryDirectory(prefix="kiln-minilm-") as tmp:
        folder = Path(tmp)
        for target in targets:
            print(f"kiln export --target {target}…", file=sys.stderr, flush=True)
            data = ["--calibration", str(args.calibration), "--eval", str(args.eval)]
            result = export(checkpoint, target, folder, data)
            if "error" in result:
                skipped[target] = f"kiln export failed: {result['error']}"
                print(f"  {skipped[target]}", file=sys.stderr, flush=True)
                continue
            exports[target] = result
            print(f"  {result['wall']:.1f}s", file=sys.stderr, flush=True)
        if not exports:
            raise SystemExit("no target exported: " + "; ".join(skipped.values()))
        artifacts = [e["artifact"] for e in exports.values()]
        if args.wait_quiet:
            print("waiting for a quiet machine…", file=sys.stderr, flush=True)
            waited = wait_quiet(args.wait_quiet)
            print(
                "  timed out; measuring anyway" if waited is None else f"  after {waited:.0f}s",
                file=sys.stderr,
                flush=True,
            )
        report, command = bench(checkpoint, artifacts, folder, args)
    results = {
        "benchmark": "all-MiniLM-L6-v2: kiln bench of every available target vs PyTorch",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "checkpoint": Path(checkpoint).name if args.checkpoint else "all-MiniLM-L6-v2",
        "command": command.replace(checkpoint, "CHECKPOINT"),
        "git": git_revision(),
        "exports": exports,
        "skipped_targets": skipped,
        "bench": report,
    }
    write_json(args.output, results)
    text = markdown(results)
    args.output.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
