"""Checkpoint sources (`modelkiln.exporter.sources`): what each kind accepts and refuses.

The module-factory protocol is the one documented in the sources module's docstring:
`file.py:make` or `pkg.mod:make` returning (module, example_inputs[, options]).
No tracing here: these tests load sources and check files, so they are fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from pathlib import Path

import models
import numpy as np
import pytest
from conftest import run_kiln

import modelkiln
from modelkiln.errors import CheckpointError, UserInputError
from modelkiln.exporter import sources
from modelkiln.exporter.safetensors_check import check_safetensors

FACTORY_HEADER = """\
import torch


class Double(torch.nn.Module):
    def forward(self, x):
        return x * 2


class Split(torch.nn.Module):
    def forward(self, a, b):
        return a + b, a - b
"""


def write_factory(folder: Path, body: str, name: str = "factory") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(FACTORY_HEADER + "\n\n" + textwrap.dedent(body))
    return path


# --------------------------------------------------------------------------- module factories


def test_factory_returning_module_and_inputs(tmp_path: Path) -> None:
    path = write_factory(
        tmp_path,
        """
        def make():
            return Double(), {"x": torch.ones(2, 3)}
    """,
    )
    source = sources.load(f"{path}:make")
    assert isinstance(source, sources.FactorySource)
    assert source.options == {}
    assert list(source.example_inputs) == ["x"]
    assert source.kind == "factory"
    described = source.describe()
    assert described["kind"] == "factory"
    assert described["path"] == f"{path}:make"


def test_factory_with_options(tmp_path: Path) -> None:
    path = write_factory(
        tmp_path,
        """
        def make():
            return (
                Split(),
                {"a": torch.ones(2, 5), "b": torch.zeros(2, 5)},
                {"output_names": ["sum", "diff"], "dynamic_axes": {"a": {0: "n", 1: "m"},
                                                                   "b": {0: "n", 1: "m"}},
                 "atol": 1e-6},
            )
    """,
    )
    source = sources.load(f"{path}:make")
    from modelkiln.exporter.specs import for_factory

    spec = for_factory(source.example_inputs, source.options, 2)
    assert spec.outputs == ("sum", "diff")
    assert spec.tolerance.atol == 1e-6
    assert [d.axes for d in spec.inputs] == [("n", "m"), ("n", "m")]
    assert dict(spec.trace_dims) == {"n": 2, "m": 5}


def test_factory_default_dynamic_axis_is_batch(tmp_path: Path) -> None:
    path = write_factory(
        tmp_path,
        """
        def make():
            return Double(), {"x": torch.ones(4, 3, 2)}
    """,
    )
    source = sources.load(f"{path}:make")
    from modelkiln.exporter.specs import for_factory

    spec = for_factory(source.example_inputs, source.options, 1)
    assert spec.inputs[0].axes == ("batch", 3, 2)
    assert spec.outputs == ("output_0",)


def test_factory_output_names_must_match_outputs(tmp_path: Path) -> None:
    from modelkiln.exporter.specs import for_factory

    path = write_factory(
        tmp_path,
        """
        def make():
            return Split(), {"a": torch.ones(2), "b": torch.ones(2)}, {"output_names": ["only"]}
    """,
    )
    source = sources.load(f"{path}:make")
    with pytest.raises(UserInputError, match="output_names"):
        for_factory(source.example_inputs, source.options, 2)


def test_factory_by_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "kiln_test_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_factory(
        package,
        """
        def build():
            return Double(), {"x": torch.ones(1, 2)}
    """,
        name="nets",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    source = sources.load("kiln_test_pkg.nets:build")
    assert isinstance(source, sources.FactorySource)
    assert source.file is None


FACTORY_MISTAKES = {
    "returns a module only": ("def make():\n    return Double()\n", "must return"),
    "returns a 4-tuple": (
        "def make():\n    return Double(), {'x': torch.ones(1)}, {}, None\n",
        "must return",
    ),
    "not a torch module": ("def make():\n    return object(), {'x': torch.ones(1)}\n", "Module"),
    "inputs not a dict": ("def make():\n    return Double(), [torch.ones(1)]\n", "dict"),
    "inputs empty": ("def make():\n    return Double(), {}\n", "dict"),
    "input not a tensor": ("def make():\n    return Double(), {'x': [1.0]}\n", "dict"),
    "options not a dict": (
        "def make():\n    return Double(), {'x': torch.ones(1)}, ['atol']\n",
        "options",
    ),
    "attribute missing": ("def other():\n    pass\n", "make"),
    "attribute not callable": ("make = 3\n", "make"),
    "file fails to import": ("raise RuntimeError('broken on purpose')\n", "broken on purpose"),
}


@pytest.mark.parametrize("mistake", list(FACTORY_MISTAKES))
def test_factory_mistakes_are_checkpoint_errors(tmp_path: Path, mistake: str) -> None:
    body, mention = FACTORY_MISTAKES[mistake]
    path = write_factory(tmp_path, body)
    with pytest.raises(CheckpointError) as info:
        sources.load(f"{path}:make")
    assert mention in str(info.value)
    assert info.value.exit_code == 2


def test_factory_of_missing_module_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="no_such_kiln_module"):
        sources.load("no_such_kiln_module.sub:make")


def test_factory_that_raises_is_a_one_line_user_error(tmp_path: Path) -> None:
    path = write_factory(
        tmp_path,
        """
        def make():
            raise RuntimeError("weights server unreachable")
    """,
    )
    result = run_kiln("export", f"{path}:make", "-o", tmp_path / "out")
    assert result.exit_code == 2, (result.exit_code, result.exception)
    assert "weights server unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- Hugging Face folders


def test_hf_source_lists_weights_and_preprocessing(tiny_bert_dir: Path) -> None:
    source = sources.load(str(tiny_bert_dir))
    assert isinstance(source, sources.HFCheckpoint)
    assert source.pickled is False
    assert source.model_type == "bert"
    assert [p.name for p in source.weights] == ["model.safetensors"]
    names = {p.name for p in source.preprocessing}
    assert {"tokenizer.json", "vocab.txt", "config.json"} <= names
    assert "model.safetensors" not in names
    weights = source.describe()["weights"][0]
    digest = hashlib.sha256((tiny_bert_dir / "model.safetensors").read_bytes()).hexdigest()
    assert weights["sha256"] == digest


def test_pickle_source_is_refused_unless_allowed(pickle_bert_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        sources.load(str(pickle_bert_dir))
    source = sources.load(str(pickle_bert_dir), allow_pickle=True)
    assert source.pickled is True


def test_sharded_checkpoint_with_missing_shard(tmp_path: Path, tiny_bert_dir: Path) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_bert_dir / "config.json").read_bytes())
    index = {
        "metadata": {},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        },
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    os.link(tiny_bert_dir / "model.safetensors", folder / "model-00001-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00002"):
        sources.load(str(folder))


def test_a_plain_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    np.savez(path, a=np.ones(2))
    with pytest.raises(CheckpointError, match="weights.npz"):
        sources.load(str(path))


# --------------------------------------------------------------------------- safetensors checks


def test_safetensors_check_accepts_a_good_file(tiny_bert_dir: Path) -> None:
    check_safetensors(tiny_bert_dir / "model.safetensors")


def _safetensors(tmp_path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize(
    "header, data, mention",
    [
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "describes"),
        ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "need 12"),
        ({"t": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "malformed"),
        ([1, 2, 3], b"", "JSON object"),
    ],
    ids=["short data", "trailing bytes", "shape vs span", "no offsets", "header not object"],
)
def test_safetensors_check_refuses_broken_files(tmp_path, header, data, mention) -> None:
    path = _safetensors(tmp_path, header, data)
    with pytest.raises(CheckpointError, match=mention):
        check_safetensors(path)


def test_safetensors_check_refuses_tiny_and_huge_headers(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="truncated"):
        check_safetensors(tiny)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header claims"):
        check_safetensors(huge)


# --------------------------------------------------------------------------- ONNX files


def test_onnx_external_data_inside_folder_is_accepted(tmp_path: Path) -> None:
    model = models.build_onnx_with_external_data(tmp_path / "m" / "mlp.onnx", "weights/W.bin")
    source = sources.load(str(model))
    assert isinstance(source, sources.OnnxSource)
    assert [p.name for p in source.files] == ["mlp.onnx", "W.bin"]
    assert [w["file"] for w in source.describe()["weights"]] == ["mlp.onnx", "weights/W.bin"]
    digest = hashlib.sha256((tmp_path / "m" / "weights" / "W.bin").read_bytes()).hexdigest()
    assert source.describe()["weights"][1]["sha256"] == digest


@pytest.mark.parametrize("location", ["W.bin", "weights/W.bin"])
def test_onnx_source_with_external_data_exports_a_self_contained_artifact(
    tmp_path: Path, location: str
) -> None:
    model = models.build_onnx_with_external_data(tmp_path / "m" / "mlp.onnx", location)
    out = tmp_path / "art"
    modelkiln.export(model, out)
    # The artifact must not depend on the source folder.
    import shutil

    shutil.rmtree(tmp_path / "m")
    models.check_mlp(modelkiln.load(out))
    assert run_kiln("validate", out).exit_code == 0


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_onnx_external_data_escaping_the_folder_is_refused(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    weight, _ = models.mlp_weights()
    secret = outside / "secret.bin"
    secret.write_bytes(weight.tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    if kind == "parent":
        location = "../outside/secret.bin"
    elif kind == "absolute":
        location = str(secret)
    else:
        (folder / "link.bin").symlink_to(secret)
        location = "link.bin"
    path = folder / "mlp.onnx"
    # Write the model pointing at `location` without (re)creating the data file there.
    models.build_onnx_with_external_data(path, "placeholder.bin")
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(proto, str(path))
    (folder / "placeholder.bin").unlink()
    with pytest.raises(CheckpointError, match="outside"):
        sources.load(str(path))


def test_onnx_missing_external_data_is_refused(tmp_path: Path) -> None:
    path = models.build_onnx_with_external_data(tmp_path / "m" / "mlp.onnx", "W.bin")
    (tmp_path / "m" / "W.bin").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        sources.load(str(path))


# --------------------------------------------------------------------------- the model bank


@pytest.mark.parametrize("name", list(models.BANK))
def test_every_bank_model_is_a_source_kiln_accepts(name: str, tmp_path: Path) -> None:
    from modelkiln.exporter.specs import infer_task

    entry = models.BANK[name]
    built = entry.build(tmp_path / name)
    source = sources.load(str(built))
    if isinstance(source, sources.HFCheckpoint):
        assert infer_task(source.config) == entry.task
        assert [p.suffix for p in source.weights] == [".safetensors"]
    else:
        assert entry.task == "custom"
        assert isinstance(source, (sources.FactorySource, sources.OnnxSource))
