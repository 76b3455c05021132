"""`kiln bench --peer NAME=PATH.onnx`: plain ONNX graphs run by ONNX Runtime beside the
artifacts, on the same feeds; and the minimum per configuration in the report.

Runs are short (--rounds 2 --warmup 1 --min-time 0); nothing asserts on timings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Exported, assert_one_line_error, run_kiln

import modelkiln
from modelkiln.benchmark.report import markdown_table, text_table

SHORT = ["--rounds", "2", "--warmup", "1", "--min-time", "0"]
SHORT_API: dict[str, Any] = {"rounds": 2, "warmup": 1, "min_time": 0.0}


def _model_onnx(artifact: Exported) -> Path:
    files = [p for p in artifact.path.glob("*.onnx")]
    assert len(files) == 1, files
    return files[0]


def _ids_only_graph(path: Path) -> Path:
    """A graph taking only int32 input_ids: out = float(input_ids) + 1, named 'ids_plus_one'."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["f", "one"], ["ids_plus_one"]),
        ],
        "ids_only",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["b", "s"])],
        [helper.make_tensor_value_info("ids_plus_one", TensorProto.FLOAT, ["b", "s"])],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _rows(report: dict[str, Any], subject: str) -> list[dict[str, Any]]:
    return [r for r in report["results"] if r["subject"] == subject]


def test_peer_runs_beside_artifact_and_baseline(tiny_bert_artifact: Exported) -> None:
    peer = _model_onnx(tiny_bert_artifact)
    report = modelkiln.bench(
        tiny_bert_artifact.path,
        baseline=str(tiny_bert_artifact.source),
        peers={"same-graph": peer},
        batch=[1, 2],
        seq=[8],
        threads=1,
        **SHORT_API,
    )
    json.dumps(report)
    kinds = [(s["id"], s["kind"]) for s in report["subjects"]]
    assert kinds == [
        ("pytorch", "baseline"),
        ("same-graph", "peer"),
        (str(tiny_bert_artifact.path), "artifact"),
    ]
    info = report["subjects"][1]
    assert info["threads"] == 1 and "ORT_ENABLE_ALL" in info["runtime"]
    assert info["path"] == str(peer.resolve())
    assert sorted(info["inputs"]) == sorted(tiny_bert_artifact.manifest["inputs"])
    assert info["inputs_left_out"] == []
    rows = _rows(report, "same-graph")
    assert [(r["batch"], r["sequence"]) for r in rows] == [(1, 8), (2, 8)]
    compared = [c for c in report["comparisons"] if c["subject"] == "same-graph"]
    assert [c["batch"] for c in compared] == [1, 2]
    # the artifact's own graph: the same outputs as PyTorch on the same feeds
    assert compared[0]["max_abs_diff"] is not None and compared[0]["max_abs_diff"] < 1e-3
    for row in report["results"]:
        lat, rounds = row["latency_ms"], row["rounds"]
        assert len(rounds["min_ms"]) == len(rounds["p50_ms"]) == 2
        for fastest, median in zip(rounds["min_ms"], rounds["p50_ms"], strict=True):
            assert 0 < fastest <= median
        assert lat["min"] == pytest.approx(min(rounds["min_ms"]), rel=1e-3, abs=1e-4)
    table = markdown_table(report)
    head = table.splitlines()[0]
    assert "| p50 ms | min ms |" in head
    line = next(x for x in table.splitlines() if x.startswith("| same-graph (peer, onnxruntime)"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    columns = [c.strip() for c in head.strip("|").split("|")]
    assert float(cells[columns.index("min ms")]) <= float(cells[columns.index("p50 ms")])
    assert "same-graph (peer, onnxruntime)" in text_table(report)


def test_peer_gets_only_the_inputs_it_takes_cast_to_its_types(
    tiny_bert_artifact: Exported, tmp_path: Path
) -> None:
    peer = _ids_only_graph(tmp_path / "ids.onnx")
    report = modelkiln.bench(
        tiny_bert_artifact.path, peers={"ids": peer}, batch=[2], seq=[8], threads=1, **SHORT_API
    )
    info = next(s for s in report["subjects"] if s["id"] == "ids")
    assert info["inputs"] == ["input_ids"]
    assert set(info["inputs_left_out"]) == set(tiny_bert_artifact.manifest["inputs"]) - {
        "input_ids"
    }
    assert info["outputs"] == ["ids_plus_one"]
    assert [r["dims"] for r in _rows(report, "ids")] == [{"batch": 2, "sequence": 8}]
    assert report["comparisons"] == []  # no baseline


def test_cli_peer_in_json_and_table(tiny_bert_artifact: Exported, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = run_kiln(
        "bench", tiny_bert_artifact.path, "--baseline", tiny_bert_artifact.source,
        "--peer", f"own={_model_onnx(tiny_bert_artifact)}",
        "--peer", f"ids={_ids_only_graph(tmp_path / 'ids.onnx')}",
        "--batch", "1", "--seq", "8", "--threads", "1", *SHORT, "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(out.read_text())
    assert [s["id"] for s in report["subjects"]] == [
        "pytorch",
        "own",
        "ids",
        str(tiny_bert_artifact.path),
    ]
    assert {r["subject"] for r in report["results"]} >= {"own", "ids"}
    own = next(c for c in report["comparisons"] if c["subject"] == "own")
    ids = next(c for c in report["comparisons"] if c["subject"] == "ids")
    assert own["max_abs_diff"] < 1e-3
    assert ids["max_abs_diff"] is None  # shares no output with the baseline
    assert "own (peer, onnxruntime)" in result.stdout and "min ms" in result.stdout
    assert "loading peer own" in result.stderr


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"this is not a protobuf")
    return path


def _needs_pixels(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["pixel_values"], ["y"])],
        "pixels",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = tmp_path / "pixels.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda tmp: f"x={tmp / 'missing.onnx'}", "no such file"),
        (lambda tmp: f"x={tmp}", "give an .onnx file"),
        (lambda tmp: "no-equals-sign", "NAME=PATH.onnx"),
        (lambda tmp: f"=/{tmp}/a.onnx", "NAME=PATH.onnx"),
        (lambda tmp: f"bad/name={_garbage(tmp)}", "NAME=PATH.onnx"),
        (lambda tmp: f"pytorch={_garbage(tmp)}", "already the id"),
    ],
    ids=["missing", "folder", "syntax", "no-name", "bad-name", "taken-name"],
)
def test_bad_peer_is_one_line_before_loading(
    tiny_bert_artifact: Exported, tmp_path: Path, make: Any, needle: str
) -> None:
    result = run_kiln(
        "bench", tiny_bert_artifact.path, "--baseline", tiny_bert_artifact.source,
        "--peer", make(tmp_path), "--seq", "8", *SHORT,
    )  # fmt: skip
    assert needle in assert_one_line_error(result, "--peer")


def test_peer_given_twice(tiny_bert_artifact: Exported, tmp_path: Path) -> None:
    peer = str(_model_onnx(tiny_bert_artifact))
    result = run_kiln(
        "bench", tiny_bert_artifact.path, "--peer", f"a={peer}", "--peer", f"a={peer}", *SHORT
    )
    assert_one_line_error(result, "--peer a given twice")


@pytest.mark.parametrize(
    ("make", "needle"),
    [(_garbage, "onnxruntime cannot load"), (_needs_pixels, "pixel_values")],
    ids=["not-onnx", "input-the-artifact-lacks"],
)
def test_peer_that_cannot_run_is_one_line(
    tiny_bert_artifact: Exported, tmp_path: Path, make: Any, needle: str
) -> None:
    result = run_kiln(
        "bench", tiny_bert_artifact.path, "--peer", f"p={make(tmp_path)}", "--seq", "8", *SHORT
    )
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr  # after progress lines
    assert "--peer p=" in errors[0] and needle in errors[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_peer_outputs_match_what_onnxruntime_gives(
    tiny_bert_artifact: Exported, tmp_path: Path
) -> None:
    """The peer runner feeds the casted ids: its output is ids + 1 exactly."""
    from modelkiln.benchmark.measure import PeakMeter
    from modelkiln.benchmark.peers import load_peer

    ids = np.arange(12, dtype=np.int64).reshape(2, 6)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    _, run = load_peer("ids", _ids_only_graph(tmp_path / "ids.onnx"), feeds, 1, PeakMeter())
    out = run(feeds)
    assert list(out) == ["ids_plus_one"]
    np.testing.assert_array_equal(out["ids_plus_one"], ids.astype(np.float32) + 1)
