"""Regression tests for the review's findings: each case pins the fixed behaviour.

CLI bad-input convention: exit code 2, exactly one line on stderr starting with `error:`, no
traceback, nothing created at the output path. Everything here is built in code (ONNX graphs
with onnx.helper, small factory files under tmp_path) so the file stays fast; only the pickle
checkpoint case traces a (tiny) BERT.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import models
import numpy as np
import pytest
from conftest import Exported, assert_one_line_error, run_kiln

import modelkiln
from modelkiln.compare import compare_outputs
from modelkiln.errors import InferenceError, ModelkilnError
from modelkiln.golden import load_golden


def export_refused(tmp_path: Path, *args: Any, mention: tuple[str, ...] = ()) -> str:
    """`kiln export ARGS -o tmp/out/art` is a one-line user error that writes nothing."""
    out = tmp_path / "out" / "art"
    result = run_kiln("export", *args, "-o", out)
    line = assert_one_line_error(result, *mention)
    assert not (tmp_path / "out").exists(), "a refused export left something at the output path"
    assert result.stdout == ""
    return line


# --------------------------------------------------------------------------- 1. pickle + stray


def test_stray_safetensors_does_not_bypass_the_pickle_refusal(
    tmp_path: Path, pickle_bert_dir: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    ckpt = shutil.copytree(pickle_bert_dir, tmp_path / "ckpt")
    save_file({"stray": torch.zeros(3)}, str(ckpt / "extra.safetensors"))
    assert not (ckpt / "model.safetensors").exists()

    export_refused(tmp_path, ckpt, mention=("--allow-pickle",))

    out = tmp_path / "art"
    result = run_kiln("export", ckpt, "-o", out, "--allow-pickle", "-q")
    assert result.exit_code == 0, result.stderr
    manifest = models.read_manifest(out)
    assert [w["file"] for w in manifest["source"]["weights"]] == ["pytorch_model.bin"]
    assert manifest["validation"]["passed"] is True


# --------------------------------------------------------------------------- 2. module factories

FACTORY_HEAD = """\
import sys
import torch


class Double(torch.nn.Module):
    def forward(self, *, x):
        return x * 2


class ReturnsDict(torch.nn.Module):
    def forward(self, *, x):
        return {"y": x * 2}


class ReturnsNone(torch.nn.Module):
    def forward(self, *, x):
        return None
"""

BAD_FACTORIES: dict[str, tuple[str, str]] = {
    "forward returns a dict": (
        "def make():\n    return ReturnsDict(), {'x': torch.ones(2, 4)}\n",
        "dict",
    ),
    "forward returns None": (
        "def make():\n    return ReturnsNone(), {'x': torch.ones(2, 4)}\n",
        "NoneType",
    ),
    "dynamic axis beyond the rank": (
        "def make():\n"
        "    return Double(), {'x': torch.ones(2, 4)}, {'dynamic_axes': {'x': {5: 'n'}}}\n",
        "dynamic_axes",
    ),
    "dynamic axis key not an int": (
        "def make():\n"
        "    return Double(), {'x': torch.ones(2, 4)}, {'dynamic_axes': {'x': {'zero': 'n'}}}\n",
        "dynamic_axes",
    ),
    "atol a string": (
        "def make():\n    return Double(), {'x': torch.ones(2, 4)}, {'atol': 'tight'}\n",
        "atol",
    ),
    "atol infinite": (
        "def make():\n    return Double(), {'x': torch.ones(2, 4)}, {'atol': float('inf')}\n",
        "atol",
    ),
    "atol negative": (
        "def make():\n    return Double(), {'x': torch.ones(2, 4)}, {'atol': -1}\n",
        "atol",
    ),
    "unknown option": (
        "def make():\n    return Double(), {'x': torch.ones(2, 4)}, {'tolerance': 1e-3}\n",
        "tolerance",
    ),
    "empty example tensor": (
        "def make():\n    return Double(), {'x': torch.zeros(0, 4)}\n",
        "empty",
    ),
    "bfloat16 example tensor": (
        "def make():\n    return Double(), {'x': torch.ones(2, 4, dtype=torch.bfloat16)}\n",
        "bfloat16",
    ),
    "make() calls sys.exit(0)": (
        "def make():\n    sys.exit(0)\n",
        "SystemExit",
    ),
}


def write_factory(folder: Path, body: str, name: str = "factory") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(FACTORY_HEAD + "\n\n" + textwrap.dedent(body))
    return path


@pytest.mark.parametrize("case", list(BAD_FACTORIES))
def test_bad_factory_is_a_one_line_user_error(tmp_path: Path, case: str) -> None:
    body, mention = BAD_FACTORIES[case]
    stem = "f_" + "".join(c if c.isalnum() else "_" for c in case)
    path = write_factory(tmp_path / "src", body, name=stem)
    export_refused(tmp_path, f"{path}:make", mention=(mention,))


def test_empty_module_in_factory_reference_is_a_user_error(tmp_path: Path) -> None:
    export_refused(tmp_path, ":make", mention=(":make",))


def _package(root: Path, name: str, module_body: str) -> None:
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(FACTORY_HEAD + "\n\n" + textwrap.dedent(module_body))


def test_factory_module_failing_at_import_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _package(tmp_path, "kiln_hardening_broken", "raise RuntimeError('broken at import')\n")
    monkeypatch.chdir(tmp_path)
    export_refused(
        tmp_path, "kiln_hardening_broken.mod:make", mention=("broken at import", "RuntimeError")
    )
    assert "kiln_hardening_broken.mod" not in sys.modules


def test_factory_by_module_name_from_the_current_folder_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "kiln_hardening_good"
    _package(tmp_path, name, "def make():\n    return Double(), {'x': torch.ones(2, 4)}\n")
    monkeypatch.chdir(tmp_path)
    for module in (name, f"{name}.mod"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    result = run_kiln("export", f"{name}.mod:make", "-o", tmp_path / "art", "-q")
    assert result.exit_code == 0, result.stderr
    assert str(tmp_path) not in sys.path, "the current folder stayed on sys.path"
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = modelkiln.load(tmp_path / "art").run({"x": x})
    np.testing.assert_allclose(got["output_0"], x * 2)


# --------------------------------------------------------------------------- 3. check shapes


def test_factory_checks_vary_every_named_dim(tmp_path: Path) -> None:
    path = write_factory(
        tmp_path / "src",
        "def make():\n"
        "    return Double(), {'x': torch.ones(2, 4)}, {'dynamic_axes': {'x': {0: 'n'}}}\n",
        name="named_dim",
    )
    out = tmp_path / "art"
    result = run_kiln("export", f"{path}:make", "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    manifest = models.read_manifest(out)
    assert manifest["inputs"]["x"]["shape"] == ["n", 4]
    sizes = [check["dims"]["n"] for check in manifest["validation"]["checks"]]
    assert len(sizes) == 2 and len(set(sizes)) == 2, sizes
    shapes = {inputs["x"].shape for inputs, _ in load_golden(out / "golden.npz")}
    assert len(shapes) == 2, shapes
    assert {s[0] for s in shapes} == set(sizes)


# --------------------------------------------------------------------------- 4. ONNX sources


def save_onnx(path: Path, graph: Any, check: bool = True) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    if check:
        onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_onnx_weight_listed_as_input_is_not_an_artifact_input(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    model = models.mlp_proto()
    model.graph.input.append(
        helper.make_tensor_value_info("W", TensorProto.FLOAT, [models.MLP_IN, models.MLP_OUT])
    )
    src = tmp_path / "weights_as_inputs.onnx"
    onnx.save(model, str(src))
    out = tmp_path / "art"
    result = run_kiln("export", src, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    assert list(models.read_manifest(out)["inputs"]) == ["x"]
    session = modelkiln.load(out)
    assert list(session.inputs) == ["x"]
    models.check_mlp(session)


def test_onnx_input_of_unknown_rank_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "unranked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    src = save_onnx(tmp_path / "src" / "unranked.onnx", graph, check=False)
    export_refused(tmp_path, src, mention=("'x'", "rank"))


@pytest.mark.parametrize("kind", ["string", "sequence"])
def test_onnx_non_numeric_tensor_input_is_refused(tmp_path: Path, kind: str) -> None:
    from onnx import TensorProto, helper

    odd = (
        helper.make_tensor_value_info("odd", TensorProto.STRING, ["n"])
        if kind == "string"
        else helper.make_tensor_sequence_value_info("odd", TensorProto.FLOAT, ["n"])
    )
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        f"{kind}_input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]), odd],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    src = save_onnx(tmp_path / "src" / f"{kind}.onnx", graph)
    export_refused(tmp_path, src, mention=("'odd'",))


def test_onnx_input_that_is_also_an_output_keeps_its_interface(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "passthrough",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
        ],
    )
    src = save_onnx(tmp_path / "passthrough.onnx", graph)
    out = tmp_path / "art"
    result = run_kiln("export", src, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    manifest = models.read_manifest(out)
    assert list(manifest["inputs"]) == ["x"]
    assert sorted(manifest["outputs"]) == ["x", "y"]
    # ONNX Runtime's fusion rules rename such an input; the backend ships the graph unfused.
    assert "interface changed" in manifest["backend"]["ort_fusions"]["reverted"]
    assert manifest["backend"]["passes"][-1]["name"] == "ort-fusions-reverted"
    x = np.array([[-1.0, 2.0, -3.0, 4.0]] * 5, dtype=np.float32)
    got = modelkiln.load(out).run({"x": x})
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["y"], np.maximum(x, 0))


def test_onnx_model_onnxruntime_cannot_load_is_one_line(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        "bogus_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    src = save_onnx(tmp_path / "src" / "bogus.onnx", graph, check=False)
    export_refused(tmp_path, src, mention=("bogus.onnx",))


# --------------------------------------------------------------------------- 5. runtime errors


def _broadcast_add(path: Path) -> Path:
    """z = x + y with x: [a, 4], y: [b, 4]; runs when a == b or one is 1, fails otherwise."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        "broadcast_add",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", 4]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["c", 4])],
    )
    return save_onnx(path, graph)


def _fixed_reshape(path: Path) -> Path:
    """Reshape x: [batch, 16] to the constant shape [2, 8]: only batch 1 runs."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "fixed_reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        initializer=[numpy_helper.from_array(np.array([2, 8], dtype=np.int64), "shape")],
    )
    return save_onnx(path, graph)


def test_backend_failure_at_run_is_an_inference_error(tmp_path: Path) -> None:
    # Validated export: the check shapes (a = b = 1, a = b = 3) run fine.
    add = tmp_path / "add"
    result = run_kiln("export", _broadcast_add(tmp_path / "add.onnx"), "-o", add, "-q")
    assert result.exit_code == 0, result.stderr
    session = modelkiln.load(add)
    feeds = {"x": np.ones((2, 4), np.float32), "y": np.ones((3, 4), np.float32)}
    with pytest.raises(InferenceError) as info:
        session.run(feeds)  # a and b are distinct named dims: the feed checks pass
    assert isinstance(info.value, ModelkilnError)
    assert "\n" not in str(info.value)

    reshape = tmp_path / "reshape"
    src = _fixed_reshape(tmp_path / "reshape.onnx")
    result = run_kiln("export", src, "-o", reshape, "-q", "--no-validate")
    assert result.exit_code == 0, result.stderr
    session = modelkiln.load(reshape)
    assert session.run({"x": np.ones((1, 16), np.float32)})["y"].shape == (2, 8)
    with pytest.raises(InferenceError):
        session.run({"x": np.ones((3, 16), np.float32)})


# --------------------------------------------------------------------------- 6. NaN comparison


def test_compare_outputs_handles_nan_and_inf() -> None:
    ref = np.array([[1.0, np.nan, np.inf], [-np.inf, 2.0, 3.0]], dtype=np.float32)
    same = compare_outputs({"y": ref}, {"y": ref.copy()}, {"atol": 1e-4})
    assert same["y"]["passed"] is True
    assert same["y"]["max_abs_diff"] == 0.0
    json.dumps(same, allow_nan=False)

    got = ref.copy()
    got[1, 1] = np.nan  # the reference is finite there
    worse = compare_outputs({"y": ref}, {"y": got}, {"atol": 1e-4})
    assert worse["y"]["passed"] is False
    assert "non-finite" in worse["y"]["problem"]
    assert not np.isnan(worse["y"]["max_abs_diff"])
    json.dumps(worse, allow_nan=False)

    all_nan = compare_outputs(
        {"y": np.ones((2, 2), np.float32)}, {"y": np.full((2, 2), np.nan, np.float32)}, {"atol": 1}
    )
    assert all_nan["y"]["passed"] is False
    assert "non-finite" in all_nan["y"]["problem"]
    assert not np.isnan(all_nan["y"]["max_abs_diff"])
    json.dumps(all_nan, allow_nan=False)


# --------------------------------------------------------------------------- 7. kiln validate


def test_validate_fails_when_golden_is_gone_but_a_validation_is_recorded(
    tmp_path: Path, mlp_artifact: Exported
) -> None:
    art = shutil.copytree(mlp_artifact.path, tmp_path / "art")
    (art / "golden.npz").unlink()
    manifest = models.read_manifest(art)
    assert manifest["validation"]["passed"] is True
    del manifest["files"]["golden.npz"]
    (art / "kiln.json").write_text(json.dumps(manifest, indent=2))
    result = run_kiln("validate", art, "--json")
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    report = json.loads(result.stdout)
    assert report["checks"]["files"]["passed"] is True  # hashes still agree
    assert report["checks"]["golden"]["passed"] is False
    assert "golden.npz" in " ".join(report["checks"]["golden"]["problems"])


def test_validate_of_an_unvalidated_export_skips_golden(tmp_path: Path, mlp_onnx: Path) -> None:
    art = tmp_path / "art"
    result = run_kiln("export", mlp_onnx, "-o", art, "-q", "--no-validate")
    assert result.exit_code == 0, result.stderr
    assert not (art / "golden.npz").exists()
    checked = run_kiln("validate", art, "--json")
    assert checked.exit_code == 0, checked.stderr
    golden = json.loads(checked.stdout)["checks"]["golden"]
    assert golden["passed"] is True and golden.get("skipped")


def test_junit_inside_the_artifact_is_refused(tmp_path: Path, mlp_artifact: Exported) -> None:
    art = shutil.copytree(mlp_artifact.path, tmp_path / "art")
    result = run_kiln("validate", art, "--junit", art / "report.xml")
    assert_one_line_error(result, "--junit")
    assert not (art / "report.xml").exists(), "the junit report was written into the artifact"
    again = run_kiln("validate", art)  # the artifact is still intact
    assert again.exit_code == 0, again.stderr


# --------------------------------------------------------------------------- 8. targets

FACTORY_WITH_MARKER = """\
import pathlib
import torch


class Double(torch.nn.Module):
    def forward(self, *, x):
        return x * 2


def make():
    pathlib.Path(__file__).with_name("MADE").touch()
    return Double(), {"x": torch.ones(2, 4)}
"""


@pytest.mark.parametrize(
    "body, mention",
    [
        ('backend = "onnxruntime"\nshapes = 3\n', "shapes"),
        ('backend = "onnxruntime"\noptions = 3\n', "options"),
        (b'backend = "onnxruntime"\ndescription = "caf\xe9"\n', "target.toml"),
        (
            'backend = "onnxruntime"\n[options]\nexternal_data_threshold_bytes = "big"\n',
            "external_data_threshold_bytes",
        ),
    ],
    ids=["shapes-not-a-table", "options-not-a-table", "not-utf8", "threshold-not-a-number"],
)
def test_bad_target_file_is_refused_before_the_model_is_loaded(
    tmp_path: Path, mlp_onnx: Path, body: str | bytes, mention: str
) -> None:
    toml = tmp_path / "target.toml"
    if isinstance(body, bytes):
        toml.write_bytes(body)
    else:
        toml.write_text(body)
    export_refused(tmp_path, mlp_onnx, "--target", toml, mention=(mention,))
    # The same target with a module factory: refused before make() (let alone tracing) runs.
    factory = tmp_path / "src" / "marked.py"
    factory.parent.mkdir()
    factory.write_text(FACTORY_WITH_MARKER)
    export_refused(tmp_path, f"{factory}:make", "--target", toml, mention=(mention,))
    assert not (factory.parent / "MADE").exists(), "the factory ran before the target was checked"


# --------------------------------------------------------------------------- 9. output paths
# `-o` under an existing file is covered by test_bad_inputs.py; --force on a folder that is
# not an artifact by test_cli.py, which does not check the one-line convention: this does.


def test_force_on_a_folder_that_is_not_an_artifact_is_one_line(
    tmp_path: Path, mlp_onnx: Path
) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    (out / "notes").mkdir()
    result = run_kiln("export", mlp_onnx, "-o", out, "--force")
    assert_one_line_error(result, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["chapter1.tex", "notes"]
    assert (out / "chapter1.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]


# ------------------------------------------------------------ pickles in disguise, custom code


def test_pickle_named_safetensors_is_named_a_pickle(tmp_path: Path, pickle_bert_dir: Path) -> None:
    """torch.save output renamed model.safetensors read as an absurd header size before."""
    ckpt = shutil.copytree(pickle_bert_dir, tmp_path / "ckpt")
    (ckpt / "pytorch_model.bin").rename(ckpt / "model.safetensors")
    line = export_refused(tmp_path, ckpt, mention=("model.safetensors", "is a pickle file"))
    assert "header claims" not in line


def test_bare_pickle_stream_named_safetensors_is_named_a_pickle(tmp_path: Path) -> None:
    import pickle

    from modelkiln.errors import CheckpointError
    from modelkiln.exporter.safetensors_check import check_safetensors

    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.safetensors"
        path.write_bytes(pickle.dumps({"weight": list(range(50))}, protocol=protocol))
        with pytest.raises(CheckpointError, match="is a pickle file"):
            check_safetensors(path)


def _with_custom_code(tmp_path: Path, tiny_bert_dir: Path) -> Path:
    ckpt = shutil.copytree(tiny_bert_dir, tmp_path / "custom")
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomBert"}
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "modeling_custom.py").write_text("raise SystemExit('this code must never run')\n")
    return ckpt


def test_checkpoint_with_custom_code_is_refused(tmp_path: Path, tiny_bert_dir: Path) -> None:
    ckpt = _with_custom_code(tmp_path, tiny_bert_dir)
    export_refused(
        tmp_path,
        ckpt,
        mention=("custom code", "AutoModel -> modeling_custom.CustomBert", "--stock-architecture"),
    )


def test_stock_architecture_exports_the_stock_class_and_says_so(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    ckpt = _with_custom_code(tmp_path, tiny_bert_dir)
    out = tmp_path / "stock"
    result = run_kiln("export", ckpt, "-o", out, "--stock-architecture", "-q")
    assert result.exit_code == 0, result.stderr
    source = models.read_manifest(out)["source"]
    assert source["stock_architecture"] is True
    # the fresh reference run follows the artifact: the stock class again, no refusal
    check = run_kiln("validate", out, "--reference", ckpt, "--json")
    assert check.exit_code == 0, check.stderr
    assert json.loads(check.stdout)["checks"]["reference"]["passed"] is True
