"""exporter/stack_traces.py: node stack traces name files by module, never by this machine's
folders, so an artifact does not depend on where its virtual environment lives."""

from __future__ import annotations

import os
import sys

import onnx
import onnx_ir as ir
import pytest
from conftest import Exported

import modelkiln.exporter.stack_traces as stack_traces
from modelkiln.exporter.stack_traces import KEY, PortableStackTraces, module_paths, portable


def test_files_are_named_by_the_module_they_were_imported_as(tmp_path):
    here = stack_traces.__file__
    package = sys.modules["onnx_ir"].__file__
    elsewhere = str(tmp_path / "build" / "factory.py")
    trace = (
        f'File "{here}", line 3, in call\n    x = 1\n'
        f'  File "{package}", line 9, in <module>\n'
        f'  File "{elsewhere}", line 12, in make\n'
        '  File "<string>", line 1, in <module>'
    )
    paths = module_paths([here, package, elsewhere, "<string>"])
    assert paths == {
        here: "modelkiln/exporter/stack_traces.py",
        package: "onnx_ir/__init__.py",
        elsewhere: "factory.py",
    }
    assert portable(trace, paths) == (
        'File "modelkiln/exporter/stack_traces.py", line 3, in call\n    x = 1\n'
        '  File "onnx_ir/__init__.py", line 9, in <module>\n'
        '  File "factory.py", line 12, in make\n'
        '  File "<string>", line 1, in <module>'
    )


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links")
def test_a_file_reached_through_a_link_is_still_found(tmp_path):
    link = tmp_path / "linked.py"
    os.symlink(stack_traces.__file__, link)
    assert module_paths([str(link)]) == {str(link): "modelkiln/exporter/stack_traces.py"}


def test_pass_rewrites_node_traces_and_reports_it():
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2]))
    node = ir.node("Relu", [x], metadata_props={KEY: f'File "{stack_traces.__file__}", line 1'})
    graph = ir.Graph([x], node.outputs, nodes=[node], opset_imports={"": 18})
    model = ir.Model(graph, ir_version=10)
    result = PortableStackTraces()(model)
    assert result.modified
    assert node.metadata_props[KEY] == 'File "modelkiln/exporter/stack_traces.py", line 1'
    assert not PortableStackTraces()(model).modified  # nothing absolute is left


def test_exported_artifact_names_no_folder_of_this_machine(tiny_bert_artifact: Exported):
    model = onnx.load(str(tiny_bert_artifact.path / "model.onnx"), load_external_data=False)
    traces = [p.value for n in model.graph.node for p in n.metadata_props if p.key == KEY]
    assert traces  # torch.onnx recorded them
    text = "\n".join(traces)
    assert 'File "transformers/models/bert/modeling_bert.py"' in text
    for folder in {os.path.dirname(os.path.dirname(onnx.__file__)), os.getcwd(), sys.prefix}:
        assert folder not in text
    names = [p["name"] for p in tiny_bert_artifact.manifest["passes"]]
    assert names[-1] == "portable-stack-traces"
