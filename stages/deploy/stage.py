"""deploy: the promotion gate, then the model on Ray Serve behind the OpenAI-compatible
API, smoke-tested with the official ``openai`` client (completion, chat, streaming).

The candidate is the version the upstream quantize run registered; it replaces
``production`` only when its held-out pass rate and perplexity pass the gates against
the current production version. Either way the stage says why. The app is stopped at
the end unless ``deploy.keep_running`` is set; ``lmforge serve`` serves production any time.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from stages.core import names
from stages.core.contract import Dashboard, Figure, Stage, StageContext, StageResult
from stages.core.errors import StageError
from stages.core.ray_runtime import ensure_ray
from stages.deploy import promotion, serving
from stages.deploy.config import DeployConfig

REPORT = "deploy.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def smoke_test(url: str, model: str, api_key: str | None, max_tokens: int, probe_requests: int = 12,
               burst_requests: int = 8) -> dict:
    """Completion, chat and a streamed chat through the openai client (any failure fails the stage), then
    ``probe_requests`` chat requests one after another for latency percentiles (seconds) and
    ``burst_requests`` at once for throughput; failures there are counted."""
    from openai import OpenAI

    oa = OpenAI(base_url=f"{url}/v1", api_key=api_key or "none", max_retries=0, timeout=120)
    listed = [m.id for m in oa.models.list().data]
    if listed != [model]:
        raise StageError(f"deploy: /v1/models lists {listed}, expected [{model}]")
    latencies, answers = [], {}
    for prompt in ("Which language is this text in? Das ist gut.", "How many words are in: the cat sat"):
        start = time.perf_counter()
        out = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                         max_tokens=max_tokens, temperature=0)
        latencies.append(time.perf_counter() - start)
        answers[prompt] = out.choices[0].message.content
    completion = oa.completions.create(model=model, prompt="The package", max_tokens=max_tokens, temperature=0)
    start = time.perf_counter()
    chunks = list(oa.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                             max_tokens=max_tokens, temperature=0, stream=True))
    stream_s = time.perf_counter() - start
    if not chunks or chunks[-1].choices[0].finish_reason is None:
        raise StageError("deploy: the streamed answer did not end with a finish_reason")
    probe, errors = [], 0
    for k in range(probe_requests):
        start = time.perf_counter()
        try:
            oa.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Say {k}"}],
                                       max_tokens=max_tokens, temperature=0)
        except Exception:  # noqa: BLE001 - counted: the figure says how many requests failed
            errors += 1
            continue
        probe.append(time.perf_counter() - start)
    figures = {f"latency_p{int(q * 100)}_s": percentile(probe, q) for q in (0.5, 0.9, 0.99)} if probe else {}
    burst = throughput(oa, model, max_tokens, burst_requests)
    return {**figures, "chat_latency_s_median": statistics.median(latencies), "stream_s": stream_s,
            "stream_chunks": len(chunks), "completion_tokens": completion.usage.completion_tokens,
            **burst, "errors": errors + burst["burst_errors"], "requests": 5 + probe_requests + burst_requests,
            "answers": answers}


def throughput(oa, model: str, max_tokens: int, requests: int) -> dict:
    """``requests`` chat requests at once (each exactly ``max_tokens`` tokens): generated tokens per second
    of wall time while the server batches them, and how many failed."""
    from concurrent.futures import ThreadPoolExecutor

    if requests < 1:
        return {"burst_errors": 0}

    def one(k: int) -> int:
        try:
            out = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Count to {k}"}],
                                             max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True})
        except Exception:  # noqa: BLE001 - counted as an error
            return -1
        return out.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(requests) as pool:
        tokens = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    done = [t for t in tokens if t >= 0]
    return {"throughput_tokens_per_s": sum(done) / wall if done else 0.0, "burst_requests": requests,
            "burst_s": wall, "burst_errors": requests - len(done)}


class DeployStage(Stage[DeployConfig]):
    name = "deploy"
    config_model = DeployConfig
    summary = "Serve the chosen model on Ray Serve (OpenAI API), smoke- and load-test it, gate promotion."
    figures = (Figure("promoted", "higher", key=True), Figure("smoke_chat_latency_s", "lower", key=True),
               Figure("smoke_stream_s", "lower", key=True), Figure("latency_p*_s", "lower", key=True),
               Figure("throughput_tokens_per_s", "higher", key=True), Figure("errors", "lower", key=True),
               Figure("candidate.pass_rate", "higher"), Figure("candidate.perplexity", "lower"))
    dashboard = Dashboard(panels=("gate", "serving"))
    inputs = {"model": "quantize:chosen"}
    registered_defaults = {"model": ("lm", names.LATEST_QUANTIZED)}

    def run(self, ctx: StageContext[DeployConfig]) -> StageResult:
        from stages.core.tracking import Tracker

        cfg = ctx.config
        name = promotion.registry_name(ctx.pipeline_name)
        tracker = ctx.tracker or Tracker(ctx.pipeline_name)
        client = tracker.client
        model_input = ctx.inputs["model"]
        if model_input.run_id:
            candidate = promotion.version_of_run(client, name, model_input.run_id)
        else:  # standalone: the registered latest-quantized version (what the input defaulted to)
            candidate = client.get_model_version_by_alias(name, names.LATEST_QUANTIZED)
        verdict, current = promotion.decide(client, name, candidate, cfg.gate)
        if verdict.promote:
            ctx.log.info("deploy: %s v%s is production (%s)", name, candidate.version, verdict.reason)
        elif current is None:
            raise StageError(f"deploy: the gate refused {name} v{candidate.version} ({verdict.reason}) and there is "
                             f"no production model to serve instead")
        else:
            ctx.log.warning("deploy: gate refused %s v%s: %s; production stays v%s", name, candidate.version,
                            verdict.reason, verdict.production_version)
        serving_version = candidate if verdict.promote else current
        if verdict.promote:
            model_dir = Path(model_input.path)
        else:  # the gate kept production: serve that
            model_dir, _, _ = serving.resolve_model(f"models:/{name}/{current.version}", tracker.tracking_uri)

        s = cfg.server
        ensure_ray(ctx.ray_address, ctx.ray_num_cpus)
        if not s.port:
            s = s.model_copy(update={"port": serving.free_port(s.host)})
        # the replicas may run on nodes that share no disk with this driver: they read the model from object storage
        location = serving.replica_location(model_dir, ctx.storage, key=serving_version.run_id or None)
        url = serving.start(location, name, s)
        try:
            smoke = smoke_test(url, name, s.api_key, cfg.smoke_max_tokens, cfg.latency_probe_requests,
                               cfg.throughput_burst_requests)
        finally:
            if not cfg.keep_running:
                serving.stop()
        ctx.log.info("deploy: %s served at %s (v%s); smoke test: chat %.3f s median, %d stream chunks%s", name, url,
                     serving_version.version, smoke["chat_latency_s_median"], smoke["stream_chunks"],
                     "" if cfg.keep_running else "; stopped (deploy.keep_running=false)")
        report = {"endpoint": url, "model": name, "served_version": str(serving_version.version),
                  "candidate_version": str(candidate.version), "promoted": verdict.promote, "reason": verdict.reason,
                  "candidate_figures": verdict.candidate, "production_figures": verdict.production,
                  "previous_production": verdict.production_version, "running": cfg.keep_running, "smoke": smoke}
        (ctx.output_dir / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False))
        if smoke["errors"]:
            ctx.log.warning("deploy: %d of %d smoke-test requests failed", smoke["errors"], smoke["requests"])
        metrics = {"promoted": float(verdict.promote), "smoke_chat_latency_s": smoke["chat_latency_s_median"],
                   **{k: v for k, v in smoke.items() if k.startswith("latency_p")},
                   **{k: smoke[k] for k in ("throughput_tokens_per_s", "burst_requests", "errors", "requests")
                      if k in smoke},
                   "smoke_stream_s": smoke["stream_s"], **{f"candidate.{k}": v for k, v in verdict.candidate.items()}}
        return StageResult(counts={"promoted": int(verdict.promote)}, metrics=metrics, details=report,
                           outputs={"report": REPORT})

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        d = result.details
        return {names.TAG_ENDPOINT: d["endpoint"], names.TAG_PROMOTED: str(d["promoted"]).lower(),
                names.TAG_GATE: d["reason"][:500], names.TAG_SERVED_VERSION: d["served_version"],
                names.TAG_CANDIDATE_VERSION: d["candidate_version"]}

