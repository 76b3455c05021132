"""The Open Inference Protocol codec on its own: bodies tritonclient builds are parsed back
to the same arrays, responses parse in tritonclient, and every malformed body is refused
with a message."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import tritonclient.http as triton_http
from serving import infer_inputs
from tritonclient.http._utils import _get_inference_request

from modelkiln.serve.metrics import Metrics
from modelkiln.serve.protocol import (
    InferRequest,
    ProtocolError,
    decode_body,
    encode_infer,
    parse_infer,
)

ARRAYS = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "f16": np.linspace(-2, 2, 6, dtype=np.float16).reshape(2, 3),
    "i64": np.array([[1, -2, 3]], dtype=np.int64),
    "u8": np.arange(5, dtype=np.uint8),
    "flag": np.array([True, False, True]),
    "text": np.array([b"hello", "gr\u00fc\u00df".encode(), b""], dtype=object),
}


def tritonclient_body(binary: bool) -> tuple[bytes, int | None]:
    inputs = infer_inputs(ARRAYS, binary)
    body, json_size = _get_inference_request(inputs, "id-7", None, 0, False, False, 0, None, None)
    return (body.encode() if isinstance(body, str) else body), json_size


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_bodies_parse_to_the_same_arrays(binary: bool) -> None:
    body, json_size = tritonclient_body(binary)
    assert (json_size is not None) == binary
    request = parse_infer(body, None if json_size is None else str(json_size))
    assert request.request_id == "id-7" and request.binary_default
    for name, value in ARRAYS.items():
        got = request.inputs[name]
        assert got.dtype == value.dtype and got.shape == value.shape, name
        assert np.array_equal(got, value), name


def test_responses_parse_in_tritonclient() -> None:
    outputs = {"a": ARRAYS["f32"], "t": ARRAYS["text"], "b": ARRAYS["flag"]}
    request = InferRequest(
        inputs={}, request_id="q", outputs=["a", "t", "b"], binary_outputs={"a", "t"}
    )
    body, header = encode_infer("m", "1", request, outputs)
    assert header is not None
    result = triton_http.InferResult.from_response_body(body, False, header)
    assert result.get_response()["id"] == "q"
    for name, value in outputs.items():
        assert np.array_equal(result.as_numpy(name), value), name
    assert "data" in result.get_output("b") and "data" not in result.get_output("a")
    as_json, header = encode_infer("m", "1", InferRequest(inputs={}), {"a": ARRAYS["f32"]})
    assert header is None
    assert json.loads(as_json)["outputs"][0]["data"] == ARRAYS["f32"].ravel().tolist()


def head(inputs: list[dict], **more: object) -> bytes:
    return json.dumps({"inputs": inputs, **more}).encode()


F32 = {"name": "x", "datatype": "FP32", "shape": [2]}


@pytest.mark.parametrize(
    "body, header, mentions",
    [
        (b"[1, 2]", None, ["JSON object"]),
        (head([{**F32, "data": [1, "a"]}]), None, ["FP32", "must be numbers", "'a'"]),
        (head([{**F32, "data": [True, False]}]), None, ["must be numbers", "True"]),
        (head([{**F32, "data": ["1e3", 2]}]), None, ["must be numbers", "'1e3'"]),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}',
            None,
            ["NaN is not a JSON number"],
        ),
        (head([{**F32, "datatype": "INT64", "data": [1.7, 2]}]), None, ["whole numbers", "1.7"]),
        (
            head([{**F32, "datatype": "INT32", "data": [2**40, 1]}]),
            None,
            ["-2147483648", "2147483647"],
        ),
        (head([{**F32, "datatype": "UINT8", "data": [-1, 1]}]), None, ["from 0 to 255", "-1"]),
        (head([{**F32, "datatype": "UINT8", "data": [300.0, 1]}]), None, ["whole numbers"]),
        (head([{**F32, "datatype": "BOOL", "data": [2, True]}]), None, ["true/false", "2"]),
        (head([{**F32, "data": [1e300, 1]}]), None, ["too large for FP32"]),
        (head([{**F32, "shape": [2**32, 2**32], "data": []}]), None, ["elements, more than"]),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": '
            + b"[" * 100_000
            + b"1"
            + b"]" * 100_000
            + b"}]}",
            None,
            ["nested too deeply"],
        ),
        (
            head([{**F32, "data": [1, 2]}], outputs=[{"name": "y", "parameters": []}]),
            None,
            ["'parameters' must be a JSON object"],
        ),
        (
            head([{**F32, "data": [1, 2]}], outputs=[{"name": "y"}, {"name": "y"}]),
            None,
            ["asked for twice"],
        ),
        (
            head([{**F32, "data": [1, 2]}], parameters={"binary_data_output": "false"}),
            None,
            ["binary_data_output must be true or false"],
        ),
        (head([{**F32, "shape": [2, -1], "data": [1, 2]}]), None, ["'shape'"]),
        (head([F32]), None, ["neither 'data' nor"]),
        (head([{**F32, "data": [1, 2]}, {**F32, "data": [1, 2]}]), None, ["given twice"]),
        (
            head([{**F32, "parameters": {"binary_data_size": 8}}]) + b"\0" * 4,
            "57",
            ["binary_data_size 8", "4 bytes"],
        ),
        (
            head([{**F32, "parameters": {"binary_data_size": 4}}]) + b"\0" * 4,
            "57",
            ["4 bytes of data", "needs 8"],
        ),
        (head([{**F32, "data": [1, 2]}]) + b"\0" * 3, "51", ["3 bytes of binary tensor data"]),
        (head([{**F32, "data": [1, 2]}]), "9999", ["does not fit"]),
        (head([{**F32, "data": [1, 2]}]), "ten", ["not a number"]),
        (
            head(
                [
                    {
                        "name": "s",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 6},
                    }
                ]
            )
            + b"\x09\0\0\0ab",
            "77",
            ["runs past its data"],
        ),
    ],
)
def test_malformed_bodies_are_refused_with_a_message(body, header, mentions) -> None:
    if header is not None:  # the JSON's real length where the case means it to be right
        header = str(body.index(b"}]}") + 3) if header not in ("9999", "ten") else header
    with pytest.raises(ProtocolError) as caught:
        parse_infer(body, header)
    assert caught.value.status == 400
    for text in mentions:
        assert text in str(caught.value), str(caught.value)


def test_compressed_bodies_are_limited_after_decompression() -> None:
    data = b"{" + b" " * 10_000 + b"}"
    assert decode_body(zlib.compress(data), "deflate", 20_000) == data
    with pytest.raises(ProtocolError) as caught:
        decode_body(zlib.compress(data), "deflate", 1_000)  # a small bomb
    assert caught.value.status == 413 and "decompressed" in str(caught.value)
    with pytest.raises(ProtocolError) as caught:
        decode_body(b"not gzip", "gzip", 1_000)
    assert caught.value.status == 400
    for broken in (zlib.compress(data) + b"trailing", zlib.compress(data)[:-6]):
        with pytest.raises(ProtocolError) as caught:
            decode_body(broken, "deflate", 20_000)
        assert caught.value.status == 400 and "complete" in str(caught.value)
    with pytest.raises(ProtocolError) as caught:
        decode_body(data, "br", 20_000)
    assert caught.value.status == 415


def test_metrics_render_triton_names_and_labels() -> None:
    metrics = Metrics(["m"])
    metrics.request_done("m", 1500.4)
    metrics.request_done("m", 10, "REJECTED")
    metrics.execution("m", rows=4, requests=2, queue_us=30, compute_us=100)
    text = metrics.render()
    assert 'nv_inference_request_success{model="m",version="1"} 1\n' in text
    assert 'nv_inference_request_failure{model="m",version="1",reason="REJECTED"} 1\n' in text
    assert 'nv_inference_count{model="m",version="1"} 4\n' in text
    assert 'nv_inference_exec_count{model="m",version="1"} 1\n' in text
    assert 'nv_inference_compute_infer_duration_us{model="m",version="1"} 200\n' in text
    assert "# TYPE nv_inference_queue_duration_us counter" in text


def test_token_types_outside_the_table_are_a_feed_error(tiny_bert_artifact) -> None:
    """BERT's segment ids index a table of type_vocab_size rows; past it ONNX Runtime fails
    with a raw Gather error, so the session names the input first."""
    import modelkiln
    from modelkiln.errors import FeedError

    session = modelkiln.load(tiny_bert_artifact.path)
    ids = np.full((1, 3), 5, dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": ids}
    with pytest.raises(FeedError) as caught:
        session.run(feeds)
    assert str(caught.value) == (
        "input 'token_type_ids' holds token type 5 at [0, 0]; the model has 2 token types (0 to 1)"
    )
    assert session.run({**feeds, "token_type_ids": ids % 2})["last_hidden_state"].shape[1] == 3
