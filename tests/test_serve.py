"""`kiln serve` as a real subprocess, driven by tritonclient's HTTP client (binary tensors
at its defaults, and JSON): health, metadata, inference equal to the runtime's, access
control, limits, a full queue, dynamic batching, metrics, draining on SIGTERM and startup
failures."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import models
import numpy as np
import pytest
import tritonclient.http as triton_http
from conftest import copy_artifact, run_kiln
from serving import Server, infer_inputs
from tritonclient.utils import InferenceServerException

import modelkiln
from modelkiln.serve import LIVE_PATH, READY_PATH

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    """Tiny BERT for ONNX Runtime and OpenVINO, from one trace."""
    out = tmp_path_factory.mktemp("served")
    result = run_kiln(
        "export", tiny_bert_dir, "--target", "cpu", "--target", "openvino-cpu",
        "--name", "bert", "-o", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return {"cpu": out / "bert-cpu", "openvino-cpu": out / "bert-openvino-cpu"}


@pytest.fixture(scope="module")
def server(artifacts):
    srv = Server(artifacts["cpu"], artifacts["openvino-cpu"])
    yield srv
    assert srv.stop() == 0, srv.log()


def feeds(batch: int = 2, sequence: int = 7, seed: int = 7) -> dict[str, np.ndarray]:
    return models.text_feeds(
        ["input_ids", "attention_mask", "token_type_ids"], batch, sequence, seed
    )


def http(url: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    """(status, JSON answer) of a raw HTTP request."""
    request = urllib.request.Request(f"http://{url}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def error_of(status_body: tuple[int, bytes]) -> tuple[int, str]:
    status, body = status_body
    return status, json.loads(body)["error"]


@pytest.mark.parametrize("target", ["cpu", "openvino-cpu"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_the_runtime(server, artifacts, target: str, binary: bool) -> None:
    client = server.client()
    name = f"bert-{target}"
    feed = feeds()
    result = client.infer(
        name,
        infer_inputs(feed, binary=binary),
        outputs=None if binary else [triton_http.InferRequestedOutput("last_hidden_state", False)],
        request_id="r-1",
    )
    expected = modelkiln.load(artifacts[target]).run(feed)["last_hidden_state"]
    got = result.as_numpy("last_hidden_state")
    assert got.dtype == np.float32 and got.shape == expected.shape
    if binary:
        assert np.array_equal(got, expected)  # the same bytes
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)  # through JSON text
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_version"] == "1"
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary


def test_health_and_metadata(server) -> None:
    client = server.client()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("bert-cpu") and client.is_model_ready("bert-cpu", "1")
    assert not client.is_model_ready("bert-cpu", "2")
    assert http(server.url, "/v2/models/bert-cpu/versions/2/ready")[0] == 404
    meta = client.get_server_metadata()
    assert meta["name"] == "modelkiln" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("bert-openvino-cpu")
    assert model["platform"] == "openvino" and model["versions"] == ["1"]
    assert model["inputs"][0] == {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}
    assert model["outputs"] == [
        {"name": "last_hidden_state", "datatype": "FP32", "shape": [-1, -1, models.HIDDEN]}
    ]
    assert client.get_model_metadata("bert-cpu", "1")["platform"] == "onnxruntime_onnx"


@pytest.mark.parametrize(
    "change, status, mentions",
    [
        ({"input_ids": np.zeros((2, 7), np.int32)}, 400, ["input_ids", "int32", "int64"]),
        ({"attention_mask": np.ones((2, 6), np.int64)}, 400, ["sequence", "7", "6"]),
        ({"input_ids": np.full((2, 7), 10**6, np.int64)}, 400, ["token id", "vocabulary"]),
        ({"extra": np.zeros((2, 7), np.int64)}, 400, ["unknown input", "extra"]),
        ({"token_type_ids": None}, 400, ["missing input", "token_type_ids"]),
    ],
    ids=["dtype", "shape", "vocabulary", "extra", "missing"],
)
def test_a_bad_tensor_is_400_with_a_message(server, change, status, mentions) -> None:
    feed = {k: v for k, v in {**feeds(), **change}.items() if v is not None}
    with pytest.raises(InferenceServerException) as caught:
        server.client().infer("bert-cpu", infer_inputs(feed))
    assert caught.value.status() == str(status)
    for text in mentions:
        assert text in caught.value.message(), caught.value.message()


@pytest.mark.parametrize(
    "path, body, status, mentions",
    [
        ("/v2/models/nope/infer", b"{}", 404, ["unknown model 'nope'", "bert-cpu"]),
        ("/v2/models/bert-cpu/versions/3/infer", b"{}", 404, ["no version '3'"]),
        ("/v2/models/bert-cpu/infer", b"{not json", 400, ["not valid JSON"]),
        ("/v2/models/bert-cpu/infer", b'{"inputs": []}', 400, ["no 'inputs'"]),
        (
            "/v2/models/bert-cpu/infer",
            b'{"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 3],'
            b' "data": [1, 2]}]}',
            400,
            ["holds 2 values", "needs 3"],
        ),
        (
            "/v2/models/bert-cpu/infer",
            b'{"inputs": [{"name": "input_ids", "datatype": "FLOAT", "shape": [1], "data": [1]}]}',
            400,
            ["datatype 'FLOAT'", "FP32"],
        ),
        ("/v2/models/bert-cpu/generate", b'{"text_input": "hi"}', 400, ["text-generation"]),
        ("/v2/nowhere", None, 404, ["no route"]),
    ],
)
def test_bad_requests_name_what_was_wrong(server, path, body, status, mentions) -> None:
    got_status, message = error_of(http(server.url, path, body))
    assert got_status == status, message
    for text in mentions:
        assert text in message, message


def test_json_request_with_requested_outputs_and_gzip(server, artifacts) -> None:
    import gzip

    feed = feeds(1, 5)
    document = {
        "id": "x",
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": list(v.shape), "data": v.ravel().tolist()}
            for n, v in feed.items()
        ],
        "outputs": [{"name": "last_hidden_state"}],
    }
    body = gzip.compress(json.dumps(document).encode())
    status, raw = http(server.url, "/v2/models/bert-cpu/infer", body, {"Content-Encoding": "gzip"})
    assert status == 200, raw
    answer = json.loads(raw)
    (output,) = answer["outputs"]
    expected = modelkiln.load(artifacts["cpu"]).run(feed)["last_hidden_state"]
    assert output["shape"] == list(expected.shape) and output["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(output["data"]).reshape(expected.shape), expected, 1e-6)
    wrong = {**document, "outputs": [{"name": "pooled"}]}
    assert error_of(http(server.url, "/v2/models/bert-cpu/infer", json.dumps(wrong).encode())) == (
        400,
        "model 'bert-cpu' has no output 'pooled'; it has last_hidden_state",
    )


def test_concurrent_requests_are_batched_and_metrics_move(server, artifacts) -> None:
    def scrape() -> dict[str, float]:
        status, raw = http(server.url, "/metrics")
        assert status == 200
        values = {}
        for line in raw.decode().splitlines():
            if line.startswith("nv_") and 'model="bert-cpu"' in line:
                key = line.split("{")[0] + (
                    "" if "reason" not in line else line.split('reason="')[1][:4]
                )
                values[key] = float(line.rsplit(" ", 1)[1])
        return values

    before = scrape()
    # different tokens and batch sizes (same sequence length): a batch split back in the
    # wrong order or at the wrong rows gives some request another's answer
    requests = [feeds(1 + i % 3, 6, seed=i) for i in range(64)]
    session = modelkiln.load(artifacts["cpu"])
    expected = [session.run(f)["last_hidden_state"] for f in requests]
    local = threading.local()  # tritonclient's HTTP client lives in the thread that made it

    def one(i: int) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = server.client()
        answer = local.client.infer("bert-cpu", infer_inputs(requests[i]))
        return answer.as_numpy("last_hidden_state")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    after = scrape()
    delta = {k: after[k] - before.get(k, 0) for k in after}
    assert delta["nv_inference_request_success"] == 64
    assert delta["nv_inference_count"] == sum(f["input_ids"].shape[0] for f in requests)
    # Requests arriving while a run is going wait together and go in one batch.
    assert delta["nv_inference_exec_count"] < 64, delta
    assert delta["nv_inference_request_duration_us"] > 0
    assert delta["nv_inference_compute_infer_duration_us"] > 0
    access = [json.loads(line) for line in server.lines if line.startswith("{")]
    assert any(a["path"] == "/v2/models/bert-cpu/infer" and a["status"] == 200 for a in access)


def test_api_key_and_limits(artifacts, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    srv = Server(
        artifacts["cpu"],
        args=("--api-key-file", str(key_file), "--open-health", "--max-request-bytes", "4000"),
    )
    try:
        assert http(srv.url, LIVE_PATH)[0] == 200 and http(srv.url, READY_PATH)[0] == 200
        assert http(srv.url, "/v2/models/bert-cpu")[0] == 401
        assert http(srv.url, "/metrics")[0] == 401
        assert http(srv.url, "/v2/models/bert-cpu/ready")[0] == 401
        with pytest.raises(InferenceServerException) as caught:
            srv.client().infer(
                "bert-cpu", infer_inputs(feeds()), headers={"Authorization": "Bearer nope"}
            )
        assert caught.value.status() == "401" and "API key" in caught.value.message()
        good = {"Authorization": f"Bearer {KEY}"}
        result = srv.client().infer("bert-cpu", infer_inputs(feeds()), headers=good)
        assert result.as_numpy("last_hidden_state").shape == (2, 7, models.HIDDEN)
        with pytest.raises(InferenceServerException) as caught:
            srv.client().infer("bert-cpu", infer_inputs(feeds(8, 40)), headers=good)
        assert caught.value.status() == "413" and "4000" in caught.value.message()
    finally:
        assert srv.stop() == 0


def test_full_queue_is_503_and_sigterm_drains(artifacts) -> None:
    # One request may wait; a worker holds each batch open for 1.5 s: the others are refused.
    srv = Server(
        artifacts["cpu"],
        args=("--max-queue-size", "1", "--max-queue-delay-ms", "1500", "--drain-seconds", "20"),
    )
    feed = feeds()

    def attempt(_: int) -> Any:
        try:
            return srv.client().infer("bert-cpu", infer_inputs(feed)).as_numpy("last_hidden_state")
        except InferenceServerException as exc:
            return exc

    try:
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(attempt, range(4)))
        answered = [o for o in outcomes if isinstance(o, np.ndarray)]
        refused = [o for o in outcomes if isinstance(o, InferenceServerException)]
        assert len(answered) == 1 and len(refused) == 3, outcomes
        assert all(e.status() == "503" and "--max-queue-size" in e.message() for e in refused)

        # SIGTERM while a request waits in its batch: it is still answered, then exit 0.
        result: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: result.update(out=attempt(0)))
        thread.start()
        time.sleep(0.5)
        start = time.monotonic()
        code = srv.stop()
        thread.join(10)
        assert isinstance(result["out"], np.ndarray), result
        assert code == 0, srv.log()
        assert time.monotonic() - start < 15
        assert "stopped" in srv.log()
    finally:
        srv.stop()


def _serve_exit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelkiln.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_startup_fails_fast_with_one_line(artifacts, tmp_path: Path) -> None:
    corrupt = copy_artifact(artifacts["cpu"], tmp_path / "corrupt-cpu")
    model = corrupt / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = str(busy.getsockname()[1])
    try:
        cases = [
            (("--port", port, str(artifacts["cpu"])), [f"port {port}", "in use", "--port"]),
            ((str(tmp_path / "missing"),), ["missing"]),
            (
                ("--api-key-file", str(tmp_path / "nokey"), str(artifacts["cpu"])),
                ["--api-key-file", "does not exist"],
            ),
            ((str(artifacts["cpu"]), str(artifacts["cpu"])), ["two artifacts", "bert-cpu"]),
            ((str(corrupt),), ["onnxruntime cannot load", "model.onnx"]),
        ]
        for args, mentions in cases:
            proc = _serve_exit(*args)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, proc.stderr
            assert lines[0].startswith("error:") and "Traceback" not in proc.stderr
            for text in mentions:
                assert text in lines[0], lines[0]
    finally:
        busy.close()


def test_a_request_past_the_timeout_is_504_and_leaves_the_queue(artifacts) -> None:
    # A batch window (3 s) longer than the request timeout (0.5 s), room for one waiting
    # request: a timed-out request must not hold that room.
    srv = Server(
        artifacts["cpu"],
        args=(
            "--max-queue-delay-ms", "3000", "--request-timeout", "0.5", "--max-queue-size", "1",
        ),
    )  # fmt: skip
    try:
        for attempt in range(2):
            start = time.monotonic()
            with pytest.raises(InferenceServerException) as caught:
                srv.client().infer("bert-cpu", infer_inputs(feeds()))
            assert time.monotonic() - start < 2.5
            assert caught.value.status() == "504", (attempt, caught.value.message())
            assert "--request-timeout" in caught.value.message()
        status, raw = http(srv.url, "/metrics")
        text = raw.decode()
        assert 'nv_inference_request_failure{model="bert-cpu",version="1",reason="CANCELED"} 2' in (
            text
        )
        assert 'nv_inference_request_duration_us{model="bert-cpu",version="1"} 0' in text
    finally:
        assert srv.stop() == 0


def test_malformed_tensors_are_400_json_and_counted(server) -> None:
    def failures() -> float:
        raw = http(server.url, "/metrics")[1].decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in raw.splitlines()
            if line.startswith('nv_inference_request_failure{model="bert-openvino-cpu"')
        )

    before = failures()
    for data, mentions in (([2**70, 1], "whole numbers"), ([1.5, 2], "whole numbers")):
        body = json.dumps(
            {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": data}]}
        ).encode()
        status, message = error_of(http(server.url, "/v2/models/bert-openvino-cpu/infer", body))
        assert status == 400 and mentions in message, message
    huge = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [4294967296, 4294967296]}]}'
    status, message = error_of(http(server.url, "/v2/models/bert-openvino-cpu/infer", huge))
    assert status == 400 and "elements" in message
    assert failures() - before == 3


LIGHT_SERVER = """
import json, sys, threading, time, urllib.error, urllib.request
from pathlib import Path
from modelkiln.serve.server import ServeConfig, start
server, sock, models = start(ServeConfig([Path(sys.argv[1])], port=0, access_log=False))
threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
url = "http://%s:%d" % sock.getsockname()[:2]
values = {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 1]}
body = {"inputs": [{"name": n, "datatype": "INT64", "shape": [1, 3], "data": v}
                   for n, v in values.items()]}
for _ in range(100):
    try:
        data = json.dumps(body).encode()
        answer = urllib.request.urlopen(url + "/v2/models/bert-cpu/infer", data)
        break
    except urllib.error.HTTPError as exc:
        sys.exit(exc.read().decode())
    except OSError:
        time.sleep(0.1)
shape = json.loads(answer.read())["outputs"][0]["shape"]
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
print(json.dumps({"shape": shape, "heavy": heavy}))
server.should_exit = True
"""


def test_serving_imports_neither_torch_nor_transformers(artifacts) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT_SERVER, str(artifacts["cpu"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"shape": [1, 3, models.HIDDEN], "heavy": []}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_sentences_as_a_bytes_input_are_tokenized_by_the_artifacts_tokenizer(
    server, artifacts, binary: bool
) -> None:
    from modelkiln.text import TextCodec

    sentences = ["hello world", "the cat sat on the mat today"]
    text = triton_http.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=object), binary)
    got = server.client().infer("bert-cpu", [text]).as_numpy("last_hidden_state")
    feeds = TextCodec.open(artifacts["cpu"]).encode_batch(sentences)
    assert feeds["attention_mask"][0].sum() < feeds["attention_mask"][1].sum()  # padded
    expected = modelkiln.load(artifacts["cpu"]).run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert server.client().get_model_metadata("bert-cpu")["parameters"]["text_input"] == "text"
    square = triton_http.InferInput("text", [1, 2], "BYTES")
    square.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
    with pytest.raises(InferenceServerException) as caught:
        server.client().infer("bert-cpu", [square])
    assert caught.value.status() == "400" and "shape [batch]" in caught.value.message()
