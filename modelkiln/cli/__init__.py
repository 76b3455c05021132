"""The `kiln` command line: one module per command group, each rendering only; the work is
done by the modules they call (pipeline, verify, describe, benchmark, cache)."""

from __future__ import annotations

import atexit
import os
import sys

import click

from modelkiln.cli.bench import bench
from modelkiln.cli.cache import cache
from modelkiln.cli.check import check
from modelkiln.cli.export import export
from modelkiln.cli.generate import generate
from modelkiln.cli.inspect import inspect
from modelkiln.cli.serve import serve
from modelkiln.cli.targets import targets
from modelkiln.cli.triton import triton
from modelkiln.cli.validate import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="modelkiln")
def main(debug: bool) -> None:
    """modelkiln: export neural networks to validated, deployable artifacts.

    \b
    kiln export CHECKPOINT -o OUT   trace, optimize, build and validate an artifact
    kiln validate ARTIFACT          re-check an artifact (files, golden outputs, reference)
    kiln inspect PATH               show what an artifact or .onnx file holds
    kiln check PATH                 check that TensorRT's ONNX parser takes the graph (no GPU)
    kiln generate ARTIFACT PROMPT   generate text with a text-generation artifact
    kiln bench ARTIFACT...          measure latency and throughput (optionally vs PyTorch)
    kiln serve ARTIFACT...          serve artifacts over the Open Inference Protocol (v2)
    kiln triton ARTIFACT... -o REPO write a Triton model repository
    kiln targets                    list the targets and whether this machine can build them
    kiln cache info|clear           show or empty the build cache
    """


for command in (export, validate, inspect, check, generate, bench, serve, triton, targets, cache):
    main.add_command(command)


def run() -> None:
    """Console-script entry point: `main`, then a fast exit once torch has been loaded.

    Tearing down torch and transformers at interpreter exit takes over a second and does
    nothing useful here: every file is closed by then, so flush the streams and leave. The
    exit handlers still run first (some 15 ms): they remove the temporary folders made with
    `tempfile.TemporaryDirectory` (an ONNX Runtime calibration scratch folder, for one).
    """
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if "torch" not in sys.modules:
        sys.exit(code)
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
