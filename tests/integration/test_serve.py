"""The OpenAI-compatible API: vLLM's engine and OpenAI app in a real Ray Serve replica
(127.0.0.1), driven by the official ``openai`` client and raw HTTP: models, completions,
chat, streaming, stop strings, usage, seeds, n, logprobs, JSON-schema output, Prometheus
metrics, concurrent requests, a client that leaves mid-stream, every bad request, and the
API key. vLLM starts once for the module (about 30 s on an idle machine)."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import httpx
import pytest

from stages.deploy.config import ServerConfig
from tests.conftest import free_port, make_tiny_model

pytestmark = pytest.mark.integration
NAME = "lmforge-test-lm"
KEY = "sekret"
SERVER = ServerConfig(max_tokens=64, max_n=3, max_num_seqs=16, kv_cache_gib=1, api_key=KEY)
KEYED = httpx.Client(headers={"authorization": f"Bearer {KEY}"})  # raw HTTP with the server's API key


@pytest.fixture(scope="module")
def served(tmp_path_factory, object_store):
    """Served as on nodes that share no disk with the driver: the replica reads the model from object storage."""
    from stages.core.ray_runtime import ensure_ray
    from stages.deploy import serving

    model_dir = make_tiny_model(tmp_path_factory.mktemp("serve") / "model")
    with pytest.MonkeyPatch.context() as env:
        for name, value in object_store.env().items():  # the driver and the Ray processes it starts reach S3
            env.setenv(name, value)
        ensure_ray(num_cpus=2)
        port = free_port()
        location = serving.replica_location(model_dir, object_store.uri("serving"), key="run-of-the-model")
        url = serving.start(location, NAME, SERVER.model_copy(update={"port": port}))
        yield {"url": url, "port": port, "model_dir": model_dir, "location": location,
               "storage": object_store.uri("serving")}
        serving.stop()
        import ray

        ray.shutdown()  # later tests start their own local clusters


def test_the_replica_reads_the_model_from_object_storage(served, monkeypatch):
    import tempfile

    from ray.util.state import list_actors

    from stages.core import storage
    from stages.deploy import serving

    location = served["location"]
    assert location == storage.join(served["storage"], serving.SERVE_FOLDER, "run-of-the-model")
    local = sorted(p.relative_to(served["model_dir"]).as_posix() for p in served["model_dir"].rglob("*") if p.is_file())
    uploaded = sorted(item[len(location) + 1:] for item in storage.list_tree(location))
    assert uploaded == sorted(local + [serving.COPY_COMPLETE])
    # the replica's own process fetched it (into its per-process folder), not read the driver's path
    replicas = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "ServeReplica" in a.class_name]
    assert len(replicas) == 1
    copies = list(Path(tempfile.gettempdir()).glob(f"{storage.FETCHED_PREFIX}{replicas[0].pid}-*/*/run-of-the-model"))
    assert len(copies) == 1 and (copies[0] / "config.json").read_bytes() == (served["model_dir"] / "config.json").read_bytes()
    # with no run to name it, a copy is named by its files' digest
    named = serving.replica_location(served["model_dir"], served["storage"])
    assert storage.name_of(named).startswith("digest-") and storage.list_tree(named)
    # a complete copy is not uploaded again (a redeploy of the same model)
    monkeypatch.setattr(storage, "upload_tree", lambda *a: pytest.fail("uploaded a complete copy again"))
    assert serving.replica_location(served["model_dir"], served["storage"], key="run-of-the-model") == location
    assert serving.replica_location(served["model_dir"], None) == str(served["model_dir"])  # local disk: as is


def client(url: str, key: str = KEY):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_openai_client_models_completion_chat_and_usage(served):
    from transformers import AutoTokenizer

    oa = client(served["url"])
    assert [m.id for m in oa.models.list().data] == [NAME]
    tok = AutoTokenizer.from_pretrained(str(served["model_dir"]))
    prompt = "The package manager installs"
    out = oa.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0)
    assert out.object == "text_completion" and isinstance(out.choices[0].text, str)
    assert out.usage.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= out.usage.completion_tokens <= 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    again = oa.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0)
    assert again.choices[0].text == out.choices[0].text  # greedy is deterministic

    chat = oa.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hello there"}],
                                      max_tokens=6, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    # "length" exactly when the answer used all 6 tokens without ending itself
    assert chat.choices[0].finish_reason == ("length" if chat.usage.completion_tokens == 6 else "stop")
    templated = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], tokenize=False,
                                        add_generation_prompt=True)
    assert chat.usage.prompt_tokens == len(tok(templated, add_special_tokens=False)["input_ids"])

    # ignore_eos (vLLM's extra) makes exactly max_tokens tokens; the same seed samples the same text
    long = oa.completions.create(model=NAME, prompt=prompt, max_tokens=16, temperature=1.0, seed=7,
                                 extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 16 and long.choices[0].finish_reason == "length"
    same = oa.completions.create(model=NAME, prompt=prompt, max_tokens=16, temperature=1.0, seed=7,
                                 extra_body={"ignore_eos": True})
    assert same.choices[0].text == long.choices[0].text
    two = oa.completions.create(model=NAME, prompt=prompt, max_tokens=4, n=2, temperature=1.0, seed=1)
    assert [c.index for c in two.choices] == [0, 1]


def test_stop_strings_cut_the_text(served):
    oa = client(served["url"])
    prompt = "Debian is"
    full = oa.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0,
                                 extra_body={"ignore_eos": True}).choices[0].text
    stop = full.strip()[2:5]
    assert len(stop) == 3, full
    cut = oa.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0, stop=[stop],
                                extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full[:full.index(stop)]


def test_streaming_chunks_match_the_whole_answer(served):
    oa = client(served["url"])
    messages = [{"role": "user", "content": "Which language is this text in? Guten Morgen"}]
    whole = oa.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True}).choices[0].message.content
    chunks = list(oa.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length" and len(chunks) >= 3
    body = {"model": NAME, "prompt": "Hello", "max_tokens": 4, "stream": True}
    with KEYED.stream("POST", f"{served['url']}/v1/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def _metric(url: str, name: str, label: str = "") -> float:
    """A counter of vLLM's Prometheus metrics, summed over its labels (those whose labels hold ``label``)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if (line.startswith(name + "{") or line.startswith(name + " ")) and label in line)


def test_concurrent_requests_all_answer_and_the_metrics_count_them(served):
    url = served["url"]
    before = _metric(url, "vllm:request_success_total")
    body = {"model": NAME, "prompt": "The kernel", "max_tokens": 16, "ignore_eos": True, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: KEYED.post(f"{url}/v1/completions", json=body, timeout=120), range(16)))
    assert [a.status_code for a in answers] == [200] * 16
    assert len({a.json()["choices"][0]["text"] for a in answers}) == 1  # greedy, batched or not: one answer
    assert _metric(url, "vllm:request_success_total") - before == 16
    assert _metric(url, "vllm:generation_tokens_total") >= 16 * 16


def test_logprobs_and_a_json_schema_through_the_openai_client(served):
    oa = client(served["url"])
    out = oa.completions.create(model=NAME, prompt="Debian is", max_tokens=4, temperature=0, logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.token_logprobs) == 4 and all(v <= 0 for v in lp.token_logprobs)
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs)  # the sampled token and the 2 most likely
    chat = oa.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                      temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "count": {"type": "integer", "minimum": 0, "maximum": 999}},
              "required": ["name", "count"], "additionalProperties": False}
    answer = oa.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Describe a package as JSON"}], max_tokens=48,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "package", "schema": schema}})
    parsed = json.loads(answer.choices[0].message.content)  # a random model, constrained to the schema
    import jsonschema

    jsonschema.validate(parsed, schema)


def test_a_client_that_leaves_mid_stream_frees_its_sequence(served):
    url = served["url"]
    finished = _metric(url, "vllm:request_success_total", 'finished_reason="length"')
    body = {"model": NAME, "prompt": "The kernel", "max_tokens": 64, "stream": True, "ignore_eos": True}
    with KEYED.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        first = next(line for line in response.iter_lines() if line)  # one chunk, then hang up
    assert first.startswith("data: ")
    again = KEYED.post(f"{url}/v1/completions", json={**body, "stream": False, "max_tokens": 4}, timeout=60)
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 4
    # the abandoned request did not run to its 64 tokens: vLLM aborted it, and only the second one finished
    assert _metric(url, "vllm:request_success_total", 'finished_reason="length"') - finished == 1
    assert _metric(url, "vllm:num_requests_running") == 0


@pytest.mark.parametrize("raw,status,param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"model": "gpt-4", "prompt": "x"}).encode(), 404, "model"),
    (json.dumps({"model": NAME, "prompt": "x", "max_tokens": -1}).encode(), 400, "max_tokens"),
    (json.dumps({"model": NAME, "prompt": "x", "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"model": NAME, "prompt": "x", "max_tokens": 100000}).encode(), 400, "max_tokens"),
    (json.dumps({"model": NAME, "prompt": "x", "max_tokens": "ten"}).encode(), 400, "max_tokens"),
    (json.dumps({"model": NAME, "prompt": "x", "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({"model": NAME, "prompt": "x", "n": 10}).encode(), 400, "n"),
    (json.dumps({"model": NAME, "prompt": ""}).encode(), 400, "prompt"),
    (json.dumps({"model": NAME}).encode(), 400, "prompt"),
    (json.dumps({"model": NAME, "prompt": "x" * 70000}).encode(), 413, None),
    (json.dumps({"model": NAME, "prompt": "x", "seed": 2**64}).encode(), 400, "seed"),
    (json.dumps({"model": NAME, "prompt": "x", "seed": 2**70}).encode(), 400, "seed"),
    (json.dumps({"model": NAME, "prompt": "x", "seed": -1}).encode(), 400, "seed"),
    (json.dumps({"model": NAME, "prompt": "x", "stop": 5}).encode(), 400, "stop"),
    (json.dumps({"model": NAME, "prompt": "x", "temprature": 0}).encode(), 400, "temprature"),
    (json.dumps({"model": NAME, "prompt": "x", "logprobs": 200}).encode(), 400, "logprobs"),
    (json.dumps({"model": NAME, "prompt": "x", "stream_options": {"include_usage": []}}).encode(), 400, None),
])
def test_bad_completion_requests_get_openai_errors(served, raw, status, param):
    response = KEYED.post(f"{served['url']}/v1/completions", content=raw,
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param:
        assert error["param"] == param, response.text


@pytest.mark.parametrize("body,param", [
    ({"model": NAME, "messages": []}, "messages"),
    ({"model": NAME, "messages": [{"role": "system", "content": "be brief"}]}, "messages"),
    ({"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": NAME, "messages": [{"role": "user"}]}, "messages.0.content"),
    ({"model": NAME, "messages": "hello"}, "messages"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}, "top_logprobs"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 99},
     "top_logprobs"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}}, None),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "stop": [""]}, "stop"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
      "max_completion_tokens": 5}, "max_completion_tokens"),
])
def test_bad_chat_requests_get_openai_errors(served, body, param):
    response = KEYED.post(f"{served['url']}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    if param:
        assert response.json()["error"]["param"] == param, response.text


def test_a_seed_at_the_top_of_its_range_and_neutral_fields_are_served(served):
    body = {"model": NAME, "prompt": "x", "max_tokens": 2, "seed": 2**63 - 1, "n": 2, "temperature": 1.0,
            "logprobs": None, "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "user": "u1"}
    response = KEYED.post(f"{served['url']}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200 and len(response.json()["choices"]) == 2
    chat = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "logprobs": False,
            "max_completion_tokens": 3, "ignore_eos": True}
    answer = KEYED.post(f"{served['url']}/v1/chat/completions", json=chat, timeout=60).json()
    assert answer["usage"]["completion_tokens"] == 3  # max_completion_tokens is honoured


@pytest.mark.parametrize("route", ["completions", "chat/completions"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_beyond_the_context_is_refused_and_an_answer_stops_at_it(served, route, stream):
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(str(served["model_dir"])).max_position_embeddings
    words = " ".join(["package"] * (context + 10))  # more tokens than the model has positions
    body = {"model": NAME, "max_tokens": 8, "stream": stream}
    body.update({"prompt": words} if route == "completions" else {"messages": [{"role": "user", "content": words}]})
    response = KEYED.post(f"{served['url']}/v1/{route}", json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and f"maximum context length is {context} tokens" in error["message"]
    assert error["param"] == ("prompt" if route == "completions" else "messages")
    # a prompt a few tokens short of the context: the answer stops where the context ends (vLLM lowers max_tokens
    # to what fits, where OpenAI refuses), and says so with finish_reason "length"
    prompt, used = _prompt_of(served["model_dir"], context - 10, chat=route != "completions")
    near = {"model": NAME, "ignore_eos": True, "max_tokens": context - used + 5, **prompt}
    if stream:
        near["stream_options"] = {"include_usage": True}
    answer = KEYED.post(f"{served['url']}/v1/{route}", json={**near, "stream": stream}, timeout=60)
    assert answer.status_code == 200
    if stream:
        chunks = [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]
        usage, finish = chunks[-1]["usage"], next(c["choices"][0]["finish_reason"] for c in reversed(chunks)
                                                  if c["choices"] and c["choices"][0]["finish_reason"])
    else:
        usage, finish = answer.json()["usage"], answer.json()["choices"][0]["finish_reason"]
    assert (usage["prompt_tokens"], usage["total_tokens"], finish) == (used, context, "length")


def _prompt_of(model_dir, tokens: int, chat: bool) -> tuple[dict, int]:
    """A completion prompt or chat messages of about ``tokens`` prompt tokens (at most that), and the count."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = [t for t in tok(" the package manager installs files on Debian systems", add_special_tokens=False)
             ["input_ids"]]

    def count(text: str) -> int:
        if chat:
            text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    ids: list[int] = []
    while count(tok.decode(ids + [vocab[len(ids) % len(vocab)]])) <= tokens:
        ids.append(vocab[len(ids) % len(vocab)])
    text = tok.decode(ids)
    return ({"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}), count(text)


def test_streamed_usage_when_asked(served):
    oa = client(served["url"])
    chunks = list(oa.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hello"}],
                                             max_tokens=5, temperature=0, stream=True,
                                             stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_unknown_paths_and_methods_answer_in_openai_shape(served):
    url = served["url"]
    missing = KEYED.post(f"{url}/v1/embeddings", json={"model": NAME, "input": "x"}, timeout=30)
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    assert "POST /v1/embeddings" in missing.json()["error"]["message"]
    wrong = httpx.get(f"{url}/v1/completions", timeout=30)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]


def test_the_api_key_guards_the_api_but_not_health_or_metrics(served):
    from openai import AuthenticationError

    url = served["url"]
    assert httpx.get(f"{url}/v1/models").status_code == 401
    wrong = httpx.post(f"{url}/v1/completions", json={"model": NAME, "prompt": "x"},
                       headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(AuthenticationError):
        client(url, "nope").models.list()
    assert client(url).completions.create(model=NAME, prompt="Hi", max_tokens=2).choices
    assert httpx.get(f"{url}/health").status_code == 200  # open for probes
    assert httpx.get(f"{url}/metrics").status_code == 200  # open for Prometheus, as from vLLM's own server


def test_a_model_that_cannot_load_fails_fast(served, tmp_path):
    """Last in the module: it replaces the served app (a restart costs a replica start), and the module's
    teardown stops what it leaves. A model folder that cannot load is reported with its reason, not waited for."""
    import time

    from stages.core.errors import StageError
    from stages.core.ray_runtime import ensure_ray
    from stages.deploy import serving

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": "many"}')
    serving.stop()
    ensure_ray(num_cpus=2)
    started = time.time()
    with pytest.raises(StageError, match="could not load"):
        serving.start(broken, NAME, ServerConfig(port=served["port"]), timeout_s=120)
    assert time.time() - started < 90  # the reason came back, not the timeout
