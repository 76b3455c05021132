"""`kiln bench`: latency, throughput and memory of artifacts, with a PyTorch baseline."""

from __future__ import annotations

import json
from pathlib import Path

import click

import modelkiln.benchmark.plan as plan
from modelkiln.artifact import Artifact, blocking_file
from modelkiln.benchmark.generation import SCHEMA as GENERATION_SCHEMA
from modelkiln.benchmark.generation import text_table as generation_table
from modelkiln.benchmark.peers import parse_peer
from modelkiln.benchmark.report import check_plot_available, plot, text_table
from modelkiln.benchmark.run import bench as run_bench
from modelkiln.cli.common import err, handle_errors, out, stock_architecture_option
from modelkiln.errors import UserInputError


def _check_writable(path: Path, option: str) -> None:
    blocker = blocking_file(path)
    if path.is_dir() or blocker is not None:
        reason = f"{blocker} is a file" if blocker else "it is a folder"
        raise UserInputError(f"cannot write {option} {path}: {reason}")


@click.command()
@click.argument("artifacts", nargs=-1, required=True)
@click.option(
    "--baseline",
    default=None,
    help="Checkpoint the artifacts came from, run in PyTorch eager on the same inputs.",
)
@click.option("--batch", default=None, help="Batch sizes, comma-separated.  [default: 1,8,32]")
@click.option(
    "--seq",
    default=None,
    help="Sequence lengths for inputs with a 'sequence' dimension.  [default: 128]",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    help="Size of an input, e.g. pixel_values=1x3x224x224, for named dimensions other than "
    "batch and sequence (those come from --batch and --seq). Repeatable.",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="Intra-op threads for every subject.  [default: the usable cores]",
)
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed runs first.")
@click.option("--rounds", type=int, default=5, show_default=True, help="Interleaved rounds.")
@click.option(
    "--min-time",
    type=float,
    default=3.0,
    show_default=True,
    help="Seconds measured per configuration, split over the rounds.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for inputs and order.")
@click.option(
    "--new-tokens",
    type=int,
    default=None,
    help="Text-generation artifacts: tokens generated per row (the prompt is --seq tokens).  "
    "[default: 64]",
)
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights in --baseline.")
@stock_architecture_option("--baseline")
@click.option(
    "--vs-openvino",
    is_flag=True,
    help="Also run the --baseline checkpoint converted by OpenVINO itself (ov.convert_model, "
    "default settings): the yardstick for an OpenVINO artifact.",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="NAME=PATH.onnx",
    help="Also run a plain ONNX graph made by another tool (e.g. Optimum's), in ONNX Runtime "
    "with all graph optimizations, the same threads and the first artifact's feeds (inputs it "
    "does not take are left out). Repeatable.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the full report as JSON to this file ('-' for stdout).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a PNG with latency per configuration and speedup over the baseline.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@handle_errors
def bench(
    artifacts: tuple[str, ...],
    baseline: str | None,
    batch: str | None,
    seq: str | None,
    shapes: tuple[str, ...],
    threads: int | None,
    warmup: int,
    rounds: int,
    min_time: float,
    seed: int,
    new_tokens: int | None,
    allow_pickle: bool,
    stock_architecture: bool,
    vs_openvino: bool,
    peers: tuple[str, ...],
    json_path: Path | None,
    plot_path: Path | None,
    quiet: bool,
) -> None:
    """Measure latency (p50/p90/p99), throughput and memory of ARTIFACTS, side by side.

    Feeds are generated from each manifest's inputs: token ids inside the vocabulary,
    attention masks of ones, images of the declared size. With --baseline, the same feeds
    also run through the PyTorch model in this process with the same thread count, and the
    table shows each artifact's speedup. Configurations run in interleaved rounds, so noise
    hits them all; the round spread shows how much the figures moved.
    """
    batches = plan.parse_sizes(batch, "--batch") if batch is not None else None
    seqs = plan.parse_sizes(seq, "--seq") if seq is not None else None
    parsed: dict[str, tuple[int, ...]] = {}
    for text in shapes:
        name, dims = plan.parse_shape(text)
        if name in parsed:
            raise UserInputError(f"--shape given twice for input '{name}'")
        parsed[name] = dims
    peer_paths: dict[str, Path] = {}
    for text in peers:
        name, path = parse_peer(text)
        if name in peer_paths:
            raise UserInputError(f"--peer {name} given twice; give each peer its own name")
        peer_paths[name] = path
    if json_path is not None and str(json_path) != "-":
        _check_writable(json_path, "--json")
    if plot_path is not None:
        _check_writable(plot_path, "--plot")
        check_plot_available()
        if artifacts and Artifact.open(artifacts[0]).manifest.decoder is not None:
            raise UserInputError("--plot draws latency reports; use --json for text generation")

    def progress(message: str) -> None:
        if not quiet:
            err.print(message, style="dim", markup=False)

    report = run_bench(
        artifacts,
        baseline=baseline,
        batch=batches,
        seq=seqs,
        shapes=parsed,
        threads=threads,
        warmup=warmup,
        rounds=rounds,
        min_time=min_time,
        seed=seed,
        allow_pickle=allow_pickle,
        stock_architecture=stock_architecture,
        vs_openvino=vs_openvino,
        peers=peer_paths,
        new_tokens=new_tokens,
        progress=progress,
    )
    table = (
        generation_table(report) if report["schema"] == GENERATION_SCHEMA else text_table(report)
    )
    text = json.dumps(report, indent=2) + "\n"
    if json_path is not None and str(json_path) == "-":
        click.echo(text, nl=False)  # stdout holds only the JSON; the table goes to stderr
        if not quiet:
            err.print(table, markup=False)
    else:
        out.print(table, markup=False)
    if json_path is not None and str(json_path) != "-":
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text)
        progress(f"wrote {json_path}")
    if plot_path is not None:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(report, plot_path)
        progress(f"wrote {plot_path}")
