"""`kiln inspect`: what an artifact or an .onnx file holds, rendered for a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import click

from modelkiln.cli.common import handle_errors, human_size, out
from modelkiln.describe import describe, validation_lines
from modelkiln.manifest import Accuracy


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
@handle_errors
def inspect(path: Path, as_json: bool) -> None:
    """Show inputs, outputs, op histogram, parameters, size and passes of an artifact or
    an .onnx file."""
    info = describe(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    out.print(f"[bold]{info['path']}[/]  {info['kind']}, {human_size(info['size_bytes'])}")
    if info["kind"] == "artifact":
        out.print(
            f"task {info['task']}, target {info['target']} ({info['backend']}, "
            f"{info['precision']}), source {info['source']}"
        )
    for title in ("inputs", "outputs"):
        out.print(f"{title}:")
        for name, spec in info[title].items():
            shape = spec["shape"]
            dims = "unknown rank" if shape is None else ", ".join(str(d) for d in shape)
            out.print(f"  {name}: {spec['dtype']}[{dims}]", markup=False)
    graph = info.get("graph")
    if graph:
        out.print(
            f"graph: {graph['nodes']} nodes, {graph['parameters']:,} parameters, opset "
            + ", ".join(f"{k} {v}" for k, v in graph["opset"].items())
        )
        out.print("ops: " + ", ".join(f"{op} {n}" for op, n in graph["ops"].items()))
    if info.get("passes"):
        out.print("passes:")
        for p in info["passes"]:
            where = f" ({p['backend']})" if p.get("backend") else ""
            out.print(
                f"  {p['name']}{where}: {p['nodes_before']} -> {p['nodes_after']} nodes, "
                f"{p['seconds'] * 1000:.0f} ms"
            )
    if "validation" in info:
        first, *rest = validation_lines(info["validation"])
        out.print(f"validation: {first}", markup=False)
        for line in rest:
            out.print(f"  {line}", markup=False)
    accuracy = info.get("accuracy")
    if accuracy:
        headline = Accuracy.from_json(accuracy).headline()
        out.print(f"accuracy vs fp32 PyTorch: {headline}", markup=False)
        search = accuracy.get("search") or {}
        for row in search.get("candidates", []):
            verdict = "pass" if row["passed"] else "fail"
            if row["label"] == search.get("chosen"):
                verdict = "chosen" + (" (--keep-best)" if search.get("kept_best") else "")
            latency = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.2f} ms"
            out.print(f"  {row['label']}: {latency}, {verdict}", markup=False)
