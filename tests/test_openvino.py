"""The OpenVINO backend: IR artifacts built from our ONNX model, compiled-blob cache, run_many."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest
from conftest import Exported, run_kiln

pytest.importorskip("openvino")

import onnx_ir as ir  # noqa: E402

import modelkiln  # noqa: E402
from modelkiln import UserInputError  # noqa: E402
from modelkiln.backends import BuildRequest, get_backend  # noqa: E402
from modelkiln.errors import BackendUnavailable, BuildError, InferenceError  # noqa: E402
from modelkiln.targets import Target, load_target  # noqa: E402

IR_FILES = {"model.xml", "model.bin"}


@pytest.fixture(scope="module")
def ov_artifact(tmp_path_factory, tiny_bert_dir, tiny_bert_artifact) -> Exported:
    """Tiny BERT for the openvino-cpu preset (after the ONNX Runtime one, which it is
    compared with)."""
    out = tmp_path_factory.mktemp("ov") / "tiny-bert-openvino"
    result = modelkiln.export(tiny_bert_dir, out, target="openvino-cpu")
    return Exported(tiny_bert_dir, out, models.read_manifest(out), result)


@pytest.fixture(scope="module")
def throughput_artifact(tmp_path_factory, tiny_bert_dir, ov_artifact) -> Exported:
    """THROUGHPUT hint and fp16 weights, from a target file; not validated (fp16 weights
    miss the fp32 tolerance), compared with the fp32 artifact instead."""
    root = tmp_path_factory.mktemp("ov-tput")
    target = root / "ov-tput.toml"
    target.write_text(
        'backend = "openvino"\ndevice = "cpu"\nprecision = "fp32"\n\n[options]\n'
        'performance_hint = "THROUGHPUT"\ncompress_to_fp16 = true\n'
    )
    out = root / "tiny-bert-tput"
    result = modelkiln.export(tiny_bert_dir, out, target=str(target), validate=False)
    return Exported(tiny_bert_dir, out, models.read_manifest(out), result)


@pytest.fixture()
def cache_root(tmp_path, monkeypatch) -> Path:
    """A private MODELKILN_CACHE_DIR, so no test writes to the user's cache."""
    monkeypatch.setenv("MODELKILN_CACHE_DIR", str(tmp_path / "kiln-cache"))
    return tmp_path / "kiln-cache"


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


# --------------------------------------------------------------------------- build


def test_artifact_holds_ir_and_nothing_temporary(ov_artifact: Exported) -> None:
    files = _files(ov_artifact.path)
    assert IR_FILES <= files
    assert not {f for f in files if f.endswith((".onnx", ".data")) or f.startswith(".")}
    assert set(ov_artifact.manifest["files"]) == files - {"kiln.json"}


def test_manifest_records_the_openvino_choices(ov_artifact: Exported) -> None:
    section = ov_artifact.manifest["backend"]
    assert section["name"] == "openvino"
    assert section["files"] == {"model": "model.xml", "weights": "model.bin"}
    assert section["device"] == "CPU"
    assert section["compress_to_fp16"] is False
    assert section["performance_hint"] == "LATENCY"
    assert section["inference_precision_hint"] == "f32"
    assert section["compiled"]["inference_precision"] == "f32"
    assert section["compiled"]["performance_hint"] == "LATENCY"
    assert section["openvino_version"]
    assert ov_artifact.manifest["precision"] == "fp32"
    assert ov_artifact.manifest["validation"]["passed"] is True


def test_outputs_match_onnxruntime_and_pytorch(
    ov_artifact: Exported, tiny_bert_artifact: Exported, cache_root: Path
) -> None:
    session = modelkiln.load(ov_artifact.path)
    ort = modelkiln.load(tiny_bert_artifact.path)
    feeds = models.text_feeds(list(session.inputs), 3, 19)
    got = session.run(feeds)
    assert list(got) == ["last_hidden_state"]
    assert got["last_hidden_state"].dtype == np.float32
    want = ort.run(feeds)["last_hidden_state"]
    assert models.max_abs_diff(want, got["last_hidden_state"]) <= models.ATOL
    models.check_tiny_bert(ov_artifact.source, session, batch=2, sequence=23)


def test_bf16_target_pins_the_precision_hint(tmp_path: Path, mlp_onnx: Path) -> None:
    backend = get_backend("openvino")
    target = load_target("openvino-cpu-bf16")
    backend.check(target)
    section = backend.build(BuildRequest(ir.load(mlp_onnx), target, tmp_path))
    assert _files(tmp_path) == IR_FILES
    assert section.get("inference_precision_hint") == "bf16"
    # What this CPU does with it: bf16 where supported, f32 otherwise; never unrecorded.
    assert section.get("compiled")["inference_precision"] in ("bf16", "f32")


def test_target_options_reach_the_manifest(
    throughput_artifact: Exported, ov_artifact: Exported
) -> None:
    section = throughput_artifact.manifest["backend"]
    assert section["performance_hint"] == "THROUGHPUT"
    assert section["compiled"]["performance_hint"] == "THROUGHPUT"
    assert section["compress_to_fp16"] is True
    fp32_bin = (ov_artifact.path / "model.bin").stat().st_size
    assert (throughput_artifact.path / "model.bin").stat().st_size < 0.7 * fp32_bin


def test_build_error_is_one_line_and_leaves_nothing(tmp_path: Path, mlp_onnx: Path) -> None:
    model = ir.load(mlp_onnx)
    node = model.graph[0]
    node.domain, node.op_type = "com.example", "Mystery"
    model.opset_imports["com.example"] = 1
    with pytest.raises(BuildError, match="openvino cannot convert") as info:
        get_backend("openvino").build(BuildRequest(model, load_target("openvino-cpu"), tmp_path))
    assert "\n" not in str(info.value)
    assert _files(tmp_path) == set()


# --------------------------------------------------------------------------- check


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"options": {"threads": 2}}, "does not know option.*compress_to_fp16"),
        ({"options": {"performance_hint": "FAST"}}, "LATENCY, THROUGHPUT"),
        ({"options": {"compress_to_fp16": "yes"}}, "true or false"),
        ({"precision": "fp16"}, "openvino builds fp32, bf16, .* only so far, not fp16"),
        ({"precision": "int8-dynamic"}, "only so far, not int8-dynamic"),
        ({"device": "npu"}, "no device 'npu'.*available: cpu"),
    ],
)
def test_check_refuses_bad_targets(changes: dict, message: str) -> None:
    settings = {"name": "t", "backend": "openvino", "device": "cpu", "precision": "fp32"}
    target = Target(**{**settings, **changes})
    with pytest.raises(UserInputError, match=message):
        get_backend("openvino").check(target)


def test_check_without_openvino_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(BackendUnavailable, match=r"pip install 'modelkiln\[openvino\]'"):
        get_backend("openvino").check(load_target("openvino-cpu"))


# --------------------------------------------------------------------------- cache


def test_second_load_uses_the_cache(ov_artifact: Exported, tmp_path: Path) -> None:
    cache = tmp_path / "blobs"
    before = _files(ov_artifact.path)
    first = modelkiln.load(ov_artifact.path, cache_dir=cache)
    assert first.cache_dir is not None and first.cache_dir.parent == cache
    blobs = sorted(cache.rglob("*.blob"))
    assert blobs, "the first load wrote no compiled blob"
    stamps = [b.stat().st_mtime_ns for b in blobs]
    second = modelkiln.load(ov_artifact.path, cache_dir=cache)
    assert second.cache_dir == first.cache_dir
    assert sorted(cache.rglob("*.blob")) == blobs  # reused, not recompiled
    assert [b.stat().st_mtime_ns for b in blobs] == stamps
    feeds = models.text_feeds(list(first.inputs), 2, 9)
    np.testing.assert_array_equal(
        first.run(feeds)["last_hidden_state"], second.run(feeds)["last_hidden_state"]
    )
    assert _files(ov_artifact.path) == before  # nothing cached inside the artifact


def test_default_cache_follows_modelkiln_cache_dir(ov_artifact: Exported, cache_root) -> None:
    session = modelkiln.load(ov_artifact.path)
    assert session.cache_dir is not None
    assert session.cache_dir.parent == cache_root / "openvino"
    assert list(session.cache_dir.glob("*.blob"))


def test_cache_can_be_disabled_but_not_put_in_the_artifact(ov_artifact: Exported) -> None:
    assert modelkiln.load(ov_artifact.path, cache_dir=None).cache_dir is None
    with pytest.raises(UserInputError, match="inside the artifact"):
        modelkiln.load(ov_artifact.path, cache_dir=ov_artifact.path / "cache")


# --------------------------------------------------------------------------- running


def test_run_many_matches_run(throughput_artifact: Exported, cache_root) -> None:
    session = modelkiln.load(throughput_artifact.path, threads=2)
    assert session.performance_hint == "THROUGHPUT"
    many = [models.text_feeds(list(session.inputs), b, s, seed=s) for b, s in [(1, 5), (3, 17)] * 3]
    results = session.run_many(many)
    assert len(results) == len(many)
    for feeds, result in zip(many, results, strict=True):
        np.testing.assert_allclose(
            result["last_hidden_state"], session.run(feeds)["last_hidden_state"], atol=1e-6
        )
    assert session.run_many([]) == []


def test_fp16_weights_stay_close_to_fp32(
    throughput_artifact: Exported, ov_artifact: Exported, cache_root
) -> None:
    feeds = models.text_feeds(["input_ids", "attention_mask", "token_type_ids"], 2, 13)
    fp16 = modelkiln.load(throughput_artifact.path).run(feeds)["last_hidden_state"]
    fp32 = modelkiln.load(ov_artifact.path).run(feeds)["last_hidden_state"]
    assert models.max_abs_diff(fp16, fp32) < 1e-2


def test_outputs_are_mapped_by_name(tmp_path: Path, cache_root) -> None:
    """Two outputs declared in the opposite order of their computation."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["zz_doubled"]),
            helper.make_node("Add", ["x", "one"], ["aa_plus_one"]),
        ],
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("zz_doubled", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("aa_plus_one", TensorProto.FLOAT, ["batch", 4]),
        ],
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    source = tmp_path / "two.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(source))
    out = modelkiln.export(source, tmp_path / "two-ov", target="openvino-cpu").path
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    session = modelkiln.load(out)
    for result in (session.run({"x": x}), session.run_many([{"x": x}])[0]):
        np.testing.assert_array_equal(result["zz_doubled"], x * 2)
        np.testing.assert_array_equal(result["aa_plus_one"], x + 1)


def test_runtime_failure_is_an_inference_error(ov_artifact: Exported, cache_root) -> None:
    session = modelkiln.load(ov_artifact.path)

    class Broken:
        def infer(self, feeds):
            raise RuntimeError("Exception from src/core.cpp:1:\nCheck 'x' failed\nout of memory")

    session._request = Broken()
    with pytest.raises(InferenceError, match="openvino failed running .*: out of memory$"):
        session.run(models.text_feeds(list(session.inputs), 1, 4))


def test_run_many_failure_names_the_feed_that_failed(
    throughput_artifact: Exported, cache_root
) -> None:
    """Requests are reused in turn; an error names the feed of the request that raised it
    and is raised in the caller's thread after every request has stopped."""
    session = modelkiln.load(throughput_artifact.path, threads=2)
    many = [models.text_feeds(list(session.inputs), 1, s) for s in (3, 4, 5, 6, 7)]
    started: list[int] = []

    class Request:
        """Runs nothing; the feed with 6 tokens fails when waited for."""

        def __init__(self) -> None:
            self.tokens = 0

        def start_async(self, feeds) -> None:
            self.tokens = next(iter(feeds.values())).shape[1]
            started.append(self.tokens)

        def wait(self) -> None:
            if self.tokens == 6:
                raise RuntimeError("Exception from src/core.cpp:1:\nCheck 'x' failed\nbad alloc")

    session._pool = [Request(), Request()]
    session._collect = lambda request: {"tokens": request.tokens}
    with pytest.raises(InferenceError, match=r"input_ids\[1, 6\].*: bad alloc$"):
        session.run_many(many)
    assert started == [3, 4, 5, 6, 7]  # two in flight at a time, in order


def test_feeds_are_checked_like_every_session(ov_artifact: Exported, cache_root) -> None:
    session = modelkiln.load(ov_artifact.path)
    feeds = models.text_feeds(list(session.inputs), 1, 4)
    feeds["input_ids"] = feeds["input_ids"].astype(np.int32)
    with pytest.raises(modelkiln.FeedError):
        session.run(feeds)
    with pytest.raises(modelkiln.FeedError):
        session.run_many([feeds])


def test_kiln_validate_passes(ov_artifact: Exported, cache_root) -> None:
    result = run_kiln("validate", ov_artifact.path, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["passed"] is True


# --------------------------------------------------------------------------- imports

LOAD_AND_REPORT = """
import json, sys
import numpy as np
import modelkiln
after_import = "openvino" in sys.modules
session = modelkiln.load(sys.argv[1])
session.run({name: np.ones((1, 5), dtype=np.int64) for name in session.inputs})
print(json.dumps({"after_import": after_import,
                  "loaded": sorted(m for m in ("torch", "transformers", "openvino")
                                   if m in sys.modules)}))
"""


def _load_in_subprocess(artifact: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_REPORT, str(artifact)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_openvino_runtime_imports_neither_torch_nor_transformers(
    ov_artifact: Exported, cache_root
) -> None:
    report = _load_in_subprocess(ov_artifact.path)
    assert report == {"after_import": False, "loaded": ["openvino"]}


def test_onnxruntime_artifacts_never_import_openvino(tiny_bert_artifact: Exported) -> None:
    report = _load_in_subprocess(tiny_bert_artifact.path)
    assert report == {"after_import": False, "loaded": []}


# --------------------------------------------------------------------------- telemetry

EXPORT_AND_LOAD = """
import json, os, sys
import numpy as np
import modelkiln
modelkiln.export(sys.argv[1], sys.argv[2], target="openvino-cpu")
session = modelkiln.load(sys.argv[2])
session.run({"x": np.ones((2, 16), dtype=np.float32)})
from modelkiln.backends.openvino.quantize import import_nncf
from modelkiln.errors import BackendUnavailable
try:
    import_nncf()  # the quantizing builds' NNCF
except BackendUnavailable:
    pass
print(json.dumps({"ci": os.environ.get("CI")}))
"""


def _run_with_home(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter whose home folder is `home`, without CI set (which would turn
    OpenVINO's telemetry off whatever modelkiln does)."""
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_export_and_load_send_no_openvino_telemetry(tmp_path: Path, mlp_onnx: Path) -> None:
    """OpenVINO's telemetry writes a client id under ~/intel before it sends anything; an
    export, a load, a run and importing NNCF through modelkiln leave no such folder, and
    leave CI unset."""
    plain = tmp_path / "plain-home"
    _run_with_home(plain, "-c", "import openvino; openvino.convert_model")
    if not (plain / "intel").exists():
        pytest.skip("this openvino leaves no telemetry trace to check against")
    home = tmp_path / "home"
    proc = _run_with_home(home, "-c", EXPORT_AND_LOAD, str(mlp_onnx), str(tmp_path / "mlp-ov"))
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"ci": None}
    # (onnxruntime's import writes ~/.cache/Microsoft/DeveloperTools: not OpenVINO's doing)
    assert not (home / "intel").exists(), sorted(p.name for p in (home / "intel").rglob("*"))
