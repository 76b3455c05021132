"""`kiln triton`: write a Triton Inference Server model repository from artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import click

from modelkiln.cli.common import err, handle_errors, out
from modelkiln.serve.triton_repo import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_QUEUE_DELAY_US,
    write_repository,
)


@click.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "repo",
    required=True,
    type=click.Path(path_type=Path),
    help="Repository folder to create; refused if it exists and is not empty, unless --force.",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=0),
    default=None,
    help=f"Largest batch Triton forms (default {DEFAULT_MAX_BATCH_SIZE}, lowered to the "
    "target's batch range); 0 turns Triton batching off. Models without a shared named "
    "first dimension are never batched.",
)
@click.option(
    "--max-queue-delay-us",
    type=click.IntRange(min=0),
    default=DEFAULT_QUEUE_DELAY_US,
    show_default=True,
    help="How long the dynamic batcher waits for more requests, in microseconds.",
)
@click.option(
    "--instances",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Model instances per model (instance_group count).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads per instance (ONNX Runtime intra_op_thread_count, OpenVINO "
    "INFERENCE_NUM_THREADS); default: the target's `threads` option, else the backend's.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing repository written by kiln triton (never other folders).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the models as JSON on stdout.")
@handle_errors
def triton(
    artifacts: tuple[Path, ...],
    repo: Path,
    max_batch_size: int | None,
    max_queue_delay_us: int,
    instances: int,
    threads: int | None,
    force: bool,
    as_json: bool,
) -> None:
    """Write a Triton Inference Server model repository with one model per ARTIFACT.

    \b
    Each model gets REPO/NAME/config.pbtxt and version 1/ with the artifact's model files
    (hard-linked or copied; the artifact is left as it is). onnxruntime artifacts use the
    onnxruntime_onnx platform, openvino ones the openvino backend. Inputs, outputs, batching,
    instances and thread settings are all written out, so Triton needs no auto-complete.
    Text-generation (decoder) artifacts are refused: serve them with `kiln serve`.

    \b
    Example:
      kiln triton out/minilm-cpu out/minilm-openvino-cpu -o triton-repo
      tritonserver --model-repository triton-repo
    """
    models = write_repository(
        list(artifacts),
        repo,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        force=force,
        threads=threads,
    )
    command = f"tritonserver --model-repository {repo.resolve()}"
    if as_json:
        document = {
            "repository": str(repo.resolve()),
            "models": [m.to_json() for m in models],
            "command": command,
        }
        click.echo(json.dumps(document, indent=2))
        return
    for model in models:
        kind, value = model.runtime
        out.print(
            f"{model.name}: {kind} {value}, max_batch_size {model.max_batch_size}, {model.path}",
            markup=False,
        )
        for note in model.notes:
            err.print(f"note: {model.name}: {note}", markup=False)
    out.print(f"run: {command}", markup=False)
