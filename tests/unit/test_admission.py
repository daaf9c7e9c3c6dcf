"""The admission rules in front of vLLM's app: caps, model name, unknown fields, and vLLM's
error bodies rewritten into OpenAI's shape."""

from __future__ import annotations

import json

import pytest

from stages.deploy.admission import Rules, openai_error, refuse, request_fields

RULES = Rules(model_name="m", api_key=None, max_request_bytes=1000, max_tokens=64, max_n=3)


def _refuse(body, kind="completion"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return refuse(RULES, raw if len(raw) <= RULES.max_request_bytes else b"", len(raw), request_fields(kind))


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"[1]", 400, None),
    ({"model": "m", "prompt": "x" * 2000}, 413, None),
    ({"model": "other", "prompt": "x"}, 404, "model"),
    ({"model": "m", "prompt": "x", "max_tokens": 65}, 400, "max_tokens"),
    ({"model": "m", "prompt": "x", "n": 4}, 400, "n"),
    ({"model": "m", "prompt": "x", "temprature": 0}, 400, "temprature"),
    ({"model": "m", "prompt": "x", "seed": -1}, 400, "seed"),
    ({"model": "m", "prompt": "x", "stop": ["a", ""]}, 400, "stop"),
])
def test_what_never_reaches_the_engine(body, status, param):
    refused = _refuse(body)
    assert refused is not None and refused[0] == status
    assert refused[1]["error"]["param"] == param and refused[1]["error"]["message"]


@pytest.mark.parametrize("messages,param", [
    ([], "messages"),
    ([{"role": "system", "content": "be brief"}], "messages"),
    ([{"role": "wizard", "content": "hi"}], "messages.0.role"),
    ([{"role": "user", "content": "hi"}, {"role": "user"}], "messages.1.content"),
    (["hi"], "messages.0"),
])
def test_chat_messages_nobody_could_answer(messages, param):
    refused = _refuse({"model": "m", "messages": messages}, "chat")
    assert refused is not None and refused[0] == 400 and refused[1]["error"]["param"] == param


def test_max_tokens_and_its_new_name_together_are_refused():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "max_completion_tokens": 5}
    assert _refuse(body, "chat")[1]["error"]["param"] == "max_completion_tokens"
    assert _refuse({**body, "max_tokens": None}, "chat") is None


def test_what_vllm_reads_is_admitted():
    assert _refuse({"model": "m", "prompt": "x", "max_tokens": 64, "n": 3, "logprobs": 2, "echo": True,
                    "ignore_eos": True, "seed": 1}) is None
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 8,
            "logprobs": True, "top_logprobs": 2, "response_format": {"type": "json_object"},
            "stream": True, "stream_options": {"include_usage": True}}
    assert _refuse(chat, "chat") is None
    refused = _refuse({**chat, "max_completion_tokens": 100}, "chat")
    assert refused[0] == 400 and refused[1]["error"]["param"] == "max_completion_tokens"


def test_vllm_errors_in_openai_shape():
    pydantic = {"error": {"message": "1 validation error ...", "type": "Bad Request", "param": "body.seed", "code": 400}}
    assert openai_error(400, pydantic, "completion")["error"] == {
        "message": "1 validation error ...", "type": "invalid_request_error", "param": "seed", "code": None}
    context = {"error": {"message": "This model's maximum context length is 256 tokens. However ...",
                         "type": "BadRequestError", "param": "input_tokens", "code": 400}}
    assert openai_error(400, context, "chat")["error"]["code"] == "context_length_exceeded"
    assert openai_error(400, context, "chat")["error"]["param"] == "messages"
    assert openai_error(400, context, "completion")["error"]["param"] == "prompt"
    assert openai_error(500, "boom", "chat")["error"]["type"] == "server_error"
    too_many = {"error": {"message": "Requested sample logprobs of 99, which is greater than max allowed: 20",
                          "type": "BadRequestError", "param": "logprobs", "code": 400}}
    assert openai_error(400, too_many, "chat")["error"]["param"] == "top_logprobs"  # chat's name for the count
    assert openai_error(400, too_many, "completion")["error"]["param"] == "logprobs"
