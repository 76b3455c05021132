"""Graph passes on the in-memory onnx_ir model, each timed and counted for the manifest.

The passes are onnx-ir's and onnxscript's own; this module only orders them and records what
each did. `dump_dir` writes the model after every pass, like a compiler's print-after-all.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import onnx_ir as ir
from onnx_ir.passes import common

from modelkiln.errors import BuildError
from modelkiln.exporter.stack_traces import PortableStackTraces
from modelkiln.rule_filter import root_filtered


def count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in model.graph.all_nodes())


class Recorded(ir.passes.InPlacePass):
    """Runs an in-place pass and appends its name, node counts and time to `log`."""

    def __init__(
        self,
        name: str,
        inner: ir.passes.PassBase,
        log: list[dict[str, Any]],
        dump_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.inner = inner
        self.log = log
        self.dump_dir = dump_dir

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = count_nodes(model)
        start = time.perf_counter()
        result = self.inner(model)
        seconds = time.perf_counter() - start
        after = count_nodes(result.model)
        # Some passes report only their main rewrite, not the cleanup they do after it.
        modified = bool(result.modified) or after != before
        self.log.append(
            {
                "name": self.name,
                "nodes_before": before,
                "nodes_after": after,
                "modified": modified,
                "seconds": round(seconds, 4),
            }
        )
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            index = len(self.log)
            ir.save(
                result.model,
                self.dump_dir / f"{index:02d}-{self.name}.onnx",
                external_data=f"{index:02d}-{self.name}.onnx.data",
                size_threshold_bytes=1 << 20,
            )
        return ir.passes.PassResult(result.model, modified)


def simplify_passes() -> list[tuple[str, ir.passes.PassBase]]:
    """The target-independent simplification pipeline, in order."""
    from onnxscript.optimizer import constant_folding
    from onnxscript.rewriter import _DEFAULT_REWRITE_RULES, RewritePass

    from modelkiln.exporter.fusions import attention_rules, transpose_rules

    return [
        ("inline", common.InlinePass()),
        ("shape-inference", common.ShapeInferencePass()),
        (
            "constant-folding",
            constant_folding.FoldConstantsPass(
                shape_inference=True, input_size_limit=8192, output_size_limit=262144
            ),
        ),
        ("rewrite-rules", RewritePass(root_filtered(_DEFAULT_REWRITE_RULES))),
        (
            "canonical-attention",
            ir.passes.Sequential(
                RewritePass(attention_rules()),
                common.RemoveUnusedNodesPass(),  # frees the key's first transpose ...
                RewritePass(transpose_rules()),  # ... to merge it with the new one
            ),
        ),
        ("identity-elimination", common.IdentityEliminationPass()),
        (
            "dead-code-elimination",
            ir.passes.Sequential(
                common.RemoveUnusedNodesPass(),
                common.RemoveUnusedFunctionsPass(),
                common.RemoveUnusedOpsetsPass(),
            ),
        ),
        (
            "lift-constants",
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        ),
        ("deduplicate-initializers", common.DeduplicateInitializersPass()),
        ("common-subexpression-elimination", common.CommonSubexpressionEliminationPass()),
        ("dead-code-elimination", common.RemoveUnusedNodesPass()),
        ("topological-sort", common.TopologicalSortPass()),
        ("portable-stack-traces", PortableStackTraces()),
    ]


def simplify(
    model: ir.Model, dump_dir: Path | None = None
) -> tuple[ir.Model, list[dict[str, Any]]]:
    log: list[dict[str, Any]] = []
    manager = ir.passes.PassManager(
        [Recorded(name, p, log, dump_dir) for name, p in simplify_passes()]
    )
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        ir.save(
            model,
            dump_dir / "00-traced.onnx",
            external_data="00-traced.onnx.data",
            size_threshold_bytes=1 << 20,
        )
    interface = _interface(model)
    result = manager(model)
    if _interface(result.model) != interface:
        raise BuildError(
            f"graph passes changed the model's interface from {interface} to "
            f"{_interface(result.model)}; this is a modelkiln bug, please report it"
        )
    return result.model, log


def _interface(model: ir.Model) -> tuple[list[str | None], list[str | None]]:
    return [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]
