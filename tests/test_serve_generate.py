"""`kiln serve` on a text-generation artifact: Triton's generate extension, answered once
and streamed as server-sent events, with the tokens `Session.generate` gives."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import decoder_models
import pytest
from conftest import run_kiln
from serving import Server

import modelkiln


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served-llama")
    ckpt = decoder_models.build_decoder("llama", root / "ckpt")
    result = run_kiln(
        "export", ckpt, "--target", "cpu", "--name", "llama", "-o", root / "llama-cpu"
    )
    assert result.exit_code == 0, result.stderr
    return root / "llama-cpu"


@pytest.fixture(scope="module")
def server(llama):
    srv = Server(llama)
    yield srv
    assert srv.stop() == 0, srv.log()


def post(url: str, path: str, document: object) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{url}{path}", data=json.dumps(document).encode())
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_generate_answers_the_sessions_tokens(server, llama) -> None:
    expected = modelkiln.load(llama).generate("w5 w9 w20", max_new_tokens=6, eos_token_id=[])
    status, body = post(
        server.url,
        "/v2/models/llama-cpu/generate",
        {"text_input": "w5 w9 w20", "parameters": {"max_tokens": 6, "stop_token_ids": []}},
    )
    assert status == 200, body
    answer = json.loads(body)
    assert answer["output_ids"] == expected.new_tokens[0].tolist()
    assert answer["text_output"] == expected.text[0]
    assert answer["model_name"] == "llama-cpu" and answer["model_version"] == "1"
    by_ids = post(
        server.url,
        "/v2/models/llama-cpu/generate",
        {"input_ids": [5, 9, 20], "parameters": {"max_tokens": 6, "stop_token_ids": []}},
    )
    assert json.loads(by_ids[1])["output_ids"] == answer["output_ids"]


def test_generate_stream_sends_one_event_per_token(server, llama) -> None:
    expected = modelkiln.load(llama).generate([[5, 9, 20]], max_new_tokens=5, eos_token_id=[])
    status, body = post(
        server.url,
        "/v2/models/llama-cpu/generate_stream",
        {"input_ids": [5, 9, 20], "parameters": {"max_tokens": 5, "stop_token_ids": []}},
    )
    assert status == 200, body
    events = [json.loads(e[len("data: ") :]) for e in body.decode().split("\n\n") if e]
    assert len(events) == 6 and events[-1]["finished"] is True
    assert [e["output_ids"][0] for e in events[:-1]] == expected.new_tokens[0].tolist()
    assert events[-1]["output_ids"] == expected.new_tokens[0].tolist()


@pytest.mark.parametrize(
    "document, mentions",
    [
        ({"parameters": {"max_tokens": 3}}, ["text_input"]),
        ({"input_ids": [5, 10**7]}, ["token id", "vocabulary"]),
        ({"input_ids": [5], "parameters": {"max_tokens": 0}}, ["max_tokens"]),
        ({"input_ids": [5], "parameters": {"max_tokens": 10**6}}, ["position"]),
        ({"input_ids": [5], "parameters": {"top_p": 2, "do_sample": True}}, ["top-p"]),
    ],
    ids=["no-prompt", "vocabulary", "zero-tokens", "too-long", "top-p"],
)
def test_bad_generate_requests_are_400_with_a_message(server, document, mentions) -> None:
    for path in ("/v2/models/llama-cpu/generate", "/v2/models/llama-cpu/generate_stream"):
        status, body = post(server.url, path, document)
        assert status == 400, body
        message = json.loads(body)["error"]
        for text in mentions:
            assert text in message, message
