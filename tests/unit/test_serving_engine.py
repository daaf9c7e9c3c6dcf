"""The serving engine's continuous batching: a request that joins a running batch, or
runs beside others that finish early, gets exactly the tokens it gets alone."""

from __future__ import annotations

import pytest
import torch

from stages.deploy.engine import Engine, GenRequest
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from stages.alignment.generate import load_policy, stop_ids

    model, tokenizer = load_policy(make_tiny_model(tmp_path_factory.mktemp("engine") / "model"), threads=1)
    with torch.no_grad():  # spread the random model's logits so greedy choices are not near-ties
        model.get_input_embeddings().weight.mul_(4)
    return Engine(model, tokenizer, stop_ids(tokenizer))


def ids(engine, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def next_logits(engine, traces: dict) -> None:
    """Each running row's next-token logits, appended to its trace."""
    for k, row in enumerate(engine.rows):
        traces.setdefault(id(row), []).append(engine.logits[k].clone())


def alone(engine, request: GenRequest, traces: dict | None = None) -> list[int]:
    [row] = engine.add([request])
    while not row.done:
        if traces is not None:
            next_logits(engine, traces)
        engine.step()
    if traces is not None:
        traces[id(request)] = traces.pop(id(row))
    return row.tokens


def test_joining_mid_flight_changes_nothing(engine):
    long = GenRequest(ids(engine, "The kernel documentation describes"), 24, temperature=0, ignore_eos=True)
    short = GenRequest(ids(engine, "A"), 5, temperature=0, ignore_eos=True)
    late = GenRequest(ids(engine, "Debian packages are built from source with"), 12, temperature=0, ignore_eos=True)
    solo: dict = {}
    expected = {name: alone(engine, r, solo) for name, r in [("long", long), ("short", short), ("late", late)]}
    assert not engine.rows  # finished rows leave the batch
    joined: dict = {}

    rows = dict(zip(["long", "short"], engine.add([long, short])))
    sizes = []
    for step in range(40):
        if step == 7:  # the short one has left; the late one joins a batch whose cache is longer than its prompt
            rows["late"] = engine.add([late])[0]
        sizes.append(len(engine.rows))
        next_logits(engine, joined)
        engine.step()
        if not engine.rows:
            break
    assert {name: row.tokens for name, row in rows.items()} == expected
    for name, request in [("long", long), ("short", short), ("late", late)]:  # same numbers, not just the same argmax
        assert torch.allclose(torch.stack(joined[id(rows[name])]), torch.stack(solo[id(request)]), atol=1e-4)
    assert max(sizes) == 2 and sizes[7] == 2 and not engine.rows


def test_sampling_is_per_row_and_seeded(engine):
    prompt = ids(engine, "The kernel")
    seeded = GenRequest(prompt, 10, temperature=1.0, seed=7, ignore_eos=True)
    first = alone(engine, seeded)
    beside_greedy = engine.complete([GenRequest(prompt, 10, temperature=0, ignore_eos=True), seeded])
    assert engine.tokenizer.decode(first, skip_special_tokens=True) == beside_greedy[1][0]
    assert beside_greedy[0][0] != beside_greedy[1][0]


def test_cancelled_row_leaves_and_others_continue(engine):
    a = GenRequest(ids(engine, "One"), 8, temperature=0, ignore_eos=True)
    b = GenRequest(ids(engine, "Two words"), 8, temperature=0, ignore_eos=True)
    expected = alone(engine, b)
    row_a, row_b = engine.add([a, b])
    engine.step()
    row_a.cancelled = True
    while engine.rows:
        engine.step()
    assert len(row_a.tokens) == 1 and row_b.tokens == expected


def test_stop_string_and_max_tokens(engine):
    prompt = ids(engine, "The kernel")
    free = engine.complete([GenRequest(prompt, 12, temperature=0, ignore_eos=True)])[0][0]
    cut = free[3:6]
    text, finish, _ = engine.complete([GenRequest(prompt, 12, temperature=0, ignore_eos=True, stop=[cut])])[0]
    assert finish == "stop" and text == free[:free.find(cut)]
    assert engine.complete([GenRequest(prompt, 3, temperature=0, ignore_eos=True)])[0][1:] == ("length", 3)


def test_the_server_answers_health_at_once_while_its_model_loads(tmp_path, monkeypatch):
    """The replica's model loads beside its event loop: /health is 503 "loading" (and requests 503) until the
    weights are in, then 200; a model that cannot load is reported as such, never waited for."""
    import json
    import threading

    from stages.deploy import app

    folder = make_tiny_model(tmp_path / "model")
    release = threading.Event()
    real_load = app.load_model

    def slow_load(model_dir, threads=None):
        release.wait(60)
        return real_load(model_dir, threads)

    monkeypatch.setattr(app, "load_model", slow_load)
    server_class = app.LMServer
    server = server_class(str(folder), "m", {"threads": 1})
    loading = server.health()
    assert loading.status_code == 503 and json.loads(loading.body)["status"] == "loading"
    assert json.loads(server._not_ready().body)["error"]["code"] == "model_loading"
    release.set()
    for _ in range(600):
        if server.scheduler is not None:
            break
        threading.Event().wait(0.1)
    assert server.health() == {"status": "ok", "model": "m"} and server.context == 256

    broken = tmp_path / "broken"
    broken.mkdir()
    failed = server_class(str(broken), "m", {"threads": 1})
    for _ in range(600):
        if failed.load_error:
            break
        threading.Event().wait(0.1)
    answer = json.loads(failed.health().body)
    assert answer["status"] == "failed" and answer["reason"]
