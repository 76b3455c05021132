"""all-MiniLM-L6-v2: export to every available target, bench each against PyTorch and the
strongest peers, as fractions of this machine's peak.

For every built-in target (`modelkiln.targets.preset_names()`) whose backend this machine
can build for, runs `kiln export CHECKPOINT -o TMP/minilm-TARGET --target TARGET --json
--no-cache` in a subprocess (wall time and time per stage of a full export), then one
`kiln bench` over all exported artifacts with `--baseline CHECKPOINT`, in a fresh
subprocess, so every artifact and PyTorch are measured in the same process and the same
interleaved rounds. Targets whose backend is
missing, or whose export fails, are listed with the reason. New presets are picked up
without changing this script.

The same `kiln bench` runs the peers `peers.py` builds where their tools are installed
(Optimum's O2 graph, onnxscript's ORT fusions, `transformers.exporters` with
`ort_fusions`), each as `--peer NAME=PATH.onnx`, and OpenVINO's own conversion; `peak.py`
measures the machine's fp32 and int8 peak just before, so every figure is also a fraction
of what the cores can do (`flops.py` says what is counted). Rendering: `minilm_report.py`.

Writes benchmarks/results/minilm.json (machine, export times, the full bench report) and
benchmarks/results/minilm.md (the tables the README's performance section shows), and prints
the markdown.

    .venv/bin/python benchmarks/minilm.py [--batch 1,8,32] [--seq 16,128] [--rounds 5]
        [--min-time 5] [--threads N] [--targets cpu,...] [--wait-quiet S]
        [--optimum-python /tmp/optvenv/bin/python] [--peers optimum-O2,...] [--no-peers]
        [--peak-seconds 2] [--quick] [--plot FILE.png] [--checkpoint DIR] [--output FILE]

`--quick` (for development): batch 1,32 × seq 128, 3 rounds of 2 s, a short peak.

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
from flops import read_config  # noqa: E402
from minilm_report import efficiency, markdown  # noqa: E402
from peak import describe, measure_peak  # noqa: E402
from peers import build_peers, usable  # noqa: E402

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


def bench(
    checkpoint: str,
    artifacts: list[str],
    peers: dict[str, str],
    folder: Path,
    args: argparse.Namespace,
) -> Any:
    report = folder / "bench.json"
    cmd = [*kiln_command(), "bench", *artifacts, "--baseline", checkpoint]
    if args.vs_openvino:
        cmd.append("--vs-openvino")
    for name, path in peers.items():
        cmd += ["--peer", f"{name}={path}"]
    cmd += ["--batch", args.batch, "--seq", args.seq, "--rounds", str(args.rounds)]
    cmd += ["--warmup", str(args.warmup), "--min-time", str(args.min_time), "--json", str(report)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.plot:
        cmd += ["--plot", str(args.plot.resolve())]
    done = subprocess.run(cmd, cwd=folder, stdout=subprocess.DEVNULL)  # progress on stderr
    if done.returncode != 0:
        raise SystemExit(f"kiln bench failed with exit code {done.returncode}")
    command = " ".join(["kiln", *cmd[3:]])
    for name, path in peers.items():
        command = command.replace(path, f"{name.upper()}.onnx")
    return json.loads(report.read_text()), command


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint folder (default: the MiniLM sample)")
    parser.add_argument("--targets", help="comma-separated presets (default: every available)")
    parser.add_argument("--batch", default=None, help="[default: 1,8,32; --quick 1,32]")
    parser.add_argument("--seq", default=None, help="[default: 16,128; --quick 128]")
    parser.add_argument("--rounds", type=int, default=None, help="[default: 5; --quick 3]")
    parser.add_argument("--warmup", type=int, default=None, help="[default: 2; --quick 1]")
    parser.add_argument("--min-time", type=float, default=None, help="[default: 5; --quick 2]")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="for development: batch 1,32 × seq 128, 3 rounds of 2 s, a short peak",
    )
    parser.add_argument(
        "--optimum-python",
        default=None,
        help="Python of a venv with optimum (default: this one, where optimum is installed)",
    )
    parser.add_argument(
        "--peers",
        default=None,
        help="comma-separated peers: optimum-O2, onnxscript-ort, transformers-ort (default: all)",
    )
    parser.add_argument("--no-peers", action="store_true", help="bench no peer graphs")
    parser.add_argument(
        "--peak-seconds",
        type=float,
        default=None,
        help="seconds per peak trial (3 trials per kind) [default: 2; --quick 0.5]",
    )
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
    quick = {"batch": "1,32", "seq": "128", "rounds": 3, "warmup": 1, "min_time": 2.0}
    full = {"batch": "1,8,32", "seq": "16,128", "rounds": 5, "warmup": 2, "min_time": 5.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.peak_seconds is None:
        args.peak_seconds = 0.5 if args.quick else 2.0

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
        peers: dict[str, dict[str, Any]] = {}
        if not args.no_peers:
            only = args.peers.split(",") if args.peers else None
            peers = build_peers(checkpoint, folder / "peers", args.optimum_python, only, _say)
        if args.wait_quiet:
            print("waiting for a quiet machine…", file=sys.stderr, flush=True)
            waited = wait_quiet(args.wait_quiet)
            print(
                "  timed out; measuring anyway" if waited is None else f"  after {waited:.0f}s",
                file=sys.stderr,
                flush=True,
            )
        print("measuring the machine's peak…", file=sys.stderr, flush=True)
        peak = measure_peak(args.threads, args.peak_seconds, trials=3)
        print(f"  {describe(peak)}", file=sys.stderr, flush=True)
        report, command = bench(checkpoint, artifacts, usable(peers), folder, args)
    results = {
        "benchmark": "all-MiniLM-L6-v2: kiln bench of every available target vs PyTorch",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "checkpoint": Path(checkpoint).name if args.checkpoint else "all-MiniLM-L6-v2",
        "command": command.replace(checkpoint, "CHECKPOINT"),
        "git": git_revision(),
        "exports": exports,
        "skipped_targets": skipped,
        "peers": peers,
        "peak": peak,
        "model_config": {
            k: read_config(checkpoint)[k]
            for k in ("hidden_size", "intermediate_size", "num_hidden_layers")
        },
        "bench": report,
    }
    results["efficiency"] = efficiency(results)
    write_json(args.output, results)
    text = markdown(results)
    args.output.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
