"""Wall time of `kiln export` for the MiniLM checkpoint, split by pipeline stage.

Runs the real CLI in a subprocess `--runs` times, each with `--json` into a fresh temporary
folder. Stage times come from the JSON summary (`times`); the wall time is measured around
the subprocess, so it also counts interpreter start-up and importing torch. Writes
benchmarks/results/export_time.json and prints a markdown table.

    .venv/bin/python benchmarks/export_time.py [--runs 3] [--checkpoint DIR] [--output FILE]
        [--optimum-python PYTHON]

If optimum is installed for `--optimum-python` (default: this interpreter; optimum pins
transformers < 5, so it usually has its own venv), `optimum-cli export onnx` is timed on the
same checkpoint for comparison, each of its runs right after one kiln run (the host is noisy:
compare the per-round ratios). It is never installed by this script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    default_checkpoint,
    find_tool,
    git_revision,
    machine_info,
    timed,
    write_json,
)
from peers import find_optimum  # noqa: E402

DEFAULT_OUTPUT = RESULTS / "export_time.json"
FIELDS = {
    "stages": "seconds per pipeline stage, from the `times` of `kiln export --json`",
    "stages_total": "sum of the stages",
    "wall": "wall time of the whole `kiln export` subprocess",
    "outside_stages": "wall - stages_total: interpreter start-up, importing the CLI, "
    "onnxruntime and onnx_ir, target/backend checks, moving the artifact into place",
    "import_torch_transformers": "`import torch, transformers` in a separate fresh "
    "interpreter, minus bare start-up; this cost is inside the `load` stage",
}


def run_kiln(kiln: str, checkpoint: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        cmd = [kiln, "export", checkpoint, "-o", str(Path(tmp) / "minilm-cpu"), "--json"]
        cmd.append("--no-cache")  # a full export every run, not a build-cache hit
        wall, done = timed(cmd)
    if done.returncode != 0:
        raise SystemExit(
            f"kiln export failed with exit code {done.returncode}:\n{done.stderr.strip()}"
        )
    summary = json.loads(done.stdout)
    stages = {k: float(v) for k, v in summary["times"].items()}
    return {
        "stages": stages,
        "stages_total": round(sum(stages.values()), 3),
        "wall": round(wall, 3),
        "outside_stages": round(wall - sum(stages.values()), 3),
        "size_bytes": summary["size_bytes"],
        "validation": summary["validation"],
    }


def import_time() -> float:
    """Seconds to import torch and transformers in a fresh interpreter, minus bare start-up."""
    bare, _ = timed([sys.executable, "-c", "pass"])
    full, done = timed([sys.executable, "-c", "import torch, transformers"])
    if done.returncode != 0:
        raise SystemExit(f"importing torch and transformers failed:\n{done.stderr.strip()}")
    return round(full - bare, 3)


def run_optimum(optimum_cli: str, checkpoint: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="optimum-bench-") as tmp:
        cmd = [optimum_cli, "export", "onnx", "--model", checkpoint]
        cmd += ["--task", "feature-extraction", tmp]
        wall, done = timed(cmd)
    if done.returncode != 0:
        return {"wall": round(wall, 3), "error": done.stderr.strip().splitlines()[-1:]}
    return {"wall": round(wall, 3)}


def median_of(runs: list[dict[str, Any]], stages: list[str]) -> dict[str, Any]:
    return {
        "stages": {
            s: round(statistics.median(r["stages"].get(s, 0.0) for r in runs), 3) for s in stages
        },
        **{
            k: round(statistics.median(r[k] for r in runs), 3)
            for k in ("stages_total", "outside_stages", "wall", "import_torch_transformers")
        },
    }


def markdown_table(runs: list[dict[str, Any]], median: dict[str, Any], stages: list[str]) -> str:
    head = ["run", *stages, "stages total", "outside stages", "wall", "import torch+transformers"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, r: dict[str, Any]) -> str:
        cells = [f"{r['stages'].get(s, 0.0):.1f}" for s in stages]
        cells += [f"{r[k]:.1f}" for k in ("stages_total", "outside_stages", "wall")]
        cells.append(f"({r['import_torch_transformers']:.1f})")
        return "| " + " | ".join([label, *cells]) + " |"

    lines += [row(str(i), r) for i, r in enumerate(runs, start=1)]
    lines.append(row("**median**", median))
    return "\n".join(lines) + "\n\nSeconds."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="number of exports (default 3)")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: the MiniLM sample)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    parser.add_argument(
        "--optimum-python",
        default=sys.executable,
        help="interpreter of a venv with optimum-onnx, to time optimum-cli (default: this one)",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    kiln = find_tool("kiln")
    if kiln is None:
        raise SystemExit("kiln is not installed in this environment (pip install -e '.[export]')")
    checkpoint = args.checkpoint or default_checkpoint()

    found = find_optimum(args.optimum_python)
    optimum_cli, versions = (None, None) if isinstance(found, str) else (str(found[0]), found[1])
    runs: list[dict[str, Any]] = []
    optimum_runs: list[dict[str, Any]] = []
    for i in range(1, args.runs + 1):
        print(f"kiln export run {i}/{args.runs}…", file=sys.stderr, flush=True)
        runs.append(run_kiln(kiln, checkpoint))
        runs[-1]["import_torch_transformers"] = import_time()
        print(f"  {runs[-1]['wall']:.1f}s", file=sys.stderr, flush=True)
        if optimum_cli:
            print(f"optimum-cli export onnx run {i}/{args.runs}…", file=sys.stderr, flush=True)
            optimum_runs.append(run_optimum(optimum_cli, checkpoint))
            print(f"  {optimum_runs[-1]['wall']:.1f}s", file=sys.stderr, flush=True)
    stages = list(dict.fromkeys(s for r in runs for s in r["stages"]))
    median = median_of(runs, stages)

    optimum = None
    if optimum_cli and versions:
        walls = [r["wall"] for r in optimum_runs if "error" not in r]
        ratios = [
            k["wall"] / o["wall"]
            for k, o in zip(runs, optimum_runs, strict=True)
            if "error" not in o
        ]
        optimum = {
            "python": args.optimum_python,
            "versions": versions,
            "runs": optimum_runs,
            "median_wall": round(statistics.median(walls), 3) if walls else None,
            "kiln_over_optimum_per_round": [round(r, 3) for r in ratios],
            "median_kiln_over_optimum": round(statistics.median(ratios), 3) if ratios else None,
        }

    results = {
        "benchmark": "kiln export wall time by stage",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "checkpoint": Path(checkpoint).name if args.checkpoint else "all-MiniLM-L6-v2",
        "command": "kiln export CHECKPOINT -o TMP/minilm-cpu --json --no-cache",
        "machine": machine_info(),
        "git": git_revision(),
        "fields": FIELDS,
        "runs": runs,
        "median": median,
        "optimum": optimum if optimum else "not installed; not measured",
    }
    write_json(args.output, results)

    m = results["machine"]
    print(
        f"kiln export, {results['checkpoint']}, {args.runs} run(s) on {m['cpu_model']} "
        f"({m['usable_cores']} cores), Python {m['python']}, torch {m['versions']['torch']}, "
        f"onnxruntime {m['versions']['onnxruntime']}\n"
    )
    print(markdown_table(runs, median, stages))
    if optimum:
        walls = ", ".join(f"{r['wall']:.1f}" for r in optimum["runs"])
        v = optimum["versions"]
        print(
            f"\noptimum-cli export onnx (optimum {v.get('optimum')}, transformers "
            f"{v.get('transformers')}), run right after each kiln run: {walls} s, median "
            f"{optimum['median_wall']} s; kiln / optimum per round median "
            f"{optimum['median_kiln_over_optimum']}"
        )
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
