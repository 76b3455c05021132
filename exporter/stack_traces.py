"""Node stack traces that name source files by module, not by where this machine keeps them.

torch.onnx records, for every node it makes, the Python stack that made it
(`pkg.torch.onnx.stack_trace`: `File "/home/me/venv/lib/python3.11/site-packages/transformers/
models/bert/modeling_bert.py", line 657, in forward ...`). Kept as they are, an artifact would
carry the build machine's folders, and the same checkpoint exported from two virtual
environments would give two different model files. This pass rewrites each file to the path
of the module it was imported as (`transformers/models/bert/modeling_bert.py`), which still
tells a reader where to look; a file no loaded module came from keeps only its name.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping

import onnx_ir as ir

KEY = "pkg.torch.onnx.stack_trace"
_FILE = re.compile(r'File "([^"]+)"')


def _by_module(name: str, file: str) -> str:
    relative = name.replace(".", "/")
    return relative + ("/__init__.py" if os.path.basename(file) == "__init__.py" else ".py")


def module_paths(files: Iterable[str]) -> dict[str, str]:
    """Each absolute source file in `files` -> its path by the name of the loaded module it
    is the source of, else its file name."""
    wanted = {f for f in files if os.path.isabs(f)}
    loaded: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and file.endswith(".py"):
            loaded.setdefault(file, name)
    paths = {f: _by_module(loaded[f], f) for f in wanted if f in loaded}
    missing = wanted - set(paths)
    if missing:  # the same file reached through a link: compare resolved paths
        resolved = {os.path.realpath(f): n for f, n in loaded.items()}
        for f in missing:
            found = resolved.get(os.path.realpath(f))
            paths[f] = _by_module(found, f) if found else os.path.basename(f)
    return paths


def portable(trace: str, paths: Mapping[str, str]) -> str:
    """`trace` with every absolute `File "..."` replaced as `paths` says."""
    return _FILE.sub(lambda m: f'File "{paths.get(m.group(1), m.group(1))}"', trace)


class PortableStackTraces(ir.passes.InPlacePass):
    """Rewrites the files named in node stack traces (graph, sub-graphs and functions)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = [*model.graph.all_nodes()]
        for function in model.functions.values():
            nodes.extend(function.all_nodes())
        traced = [(n, n.metadata_props[KEY]) for n in nodes if n.metadata_props.get(KEY)]
        paths = module_paths({f for _, t in traced for f in _FILE.findall(t)})
        modified = False
        for node, trace in traced:
            rewritten = portable(trace, paths)
            if rewritten != trace:
                node.metadata_props[KEY] = rewritten
                modified = True
        return ir.passes.PassResult(model, modified)
