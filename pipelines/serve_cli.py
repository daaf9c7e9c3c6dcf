"""``lmforge serve``, ``lmforge rollback`` and ``lmforge generate``: the deployed model
from the command line (registered by alias, served on Ray Serve, or run once)."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Annotated, Optional

import typer

from stages.core.errors import LmforgeError

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder.")]


def _fail(exc: LmforgeError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(exc.exit_code)


def wait_until_stopped() -> None:
    """Block until Ctrl-C or SIGTERM: how a foreground server ends."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass


def serve(
    model: ModelOpt = "models:/lmforge-demo-lm@production",
    host: Annotated[str, typer.Option(help="Bind address (loopback unless you mean otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="LMFORGE_API_KEY", help="Require Authorization: Bearer KEY.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Largest max_tokens a request may ask for.")] = 256,
    max_num_seqs: Annotated[int, typer.Option("--max-num-seqs", help="vLLM's running batch: sequences decoded together.")] = 64,
    kv_cache_gib: Annotated[int, typer.Option("--kv-cache-gib", help="KV cache on CPU, whole GiB (VLLM_CPU_KVCACHE_SPACE).")] = 1,
) -> None:
    """Serve a registered model with vLLM on Ray Serve (OpenAI-compatible API) until Ctrl-C.

    The API's model id is the registered model's name; requests naming another model get 404.
    vLLM's engine loads in the background: /health answers 503 until it is in (about 30 s
    for a small model on CPU).
    """
    from stages.cli import setup_logging
    from stages.core.ray_runtime import ensure_ray
    from stages.deploy import serving

    setup_logging()
    try:
        folder, name, version = serving.resolve_model(model)
        ensure_ray()
        from stages.deploy.config import ServerConfig

        server = ServerConfig(host=host, port=port, api_key=api_key, max_tokens=max_tokens,
                              max_num_seqs=max_num_seqs, kv_cache_gib=kv_cache_gib)
        from stages.core.storage import configured_storage

        url = serving.start(serving.replica_location(folder, configured_storage()), name, server)
    except LmforgeError as exc:
        raise _fail(exc) from None
    typer.echo(f"serving {name} v{version} at {url}/v1 (Ctrl-C stops)", err=True)
    typer.echo(json.dumps({"url": f"{url}/v1", "model": name, "version": version}))
    sys.stdout.flush()
    wait_until_stopped()
    serving.stop()


def rollback(
    name: Annotated[Optional[str], typer.Option("--name", help="Registered model (default: lmforge-<cfg>-lm).")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="Pipeline YAML whose name gives the model.")] = None,
) -> None:
    """Move the `production` alias back to the version the current one replaced."""
    from pipelines.config import load_config
    from stages.core.tracking import Tracker
    from stages.deploy import promotion

    try:
        pipeline = load_config(config, []).pipeline.name
        target = name or promotion.registry_name(pipeline)
        was, now = promotion.rollback(Tracker(pipeline).client, target)
    except LmforgeError as exc:
        raise _fail(exc) from None
    typer.echo(f"{target}: production moved from v{was} back to v{now}", err=True)
    typer.echo(json.dumps({"model": target, "from": was, "to": now}))


def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The user message (or raw text with --raw).")],
    model: ModelOpt = "models:/lmforge-demo-lm@production",
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 32,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    seed: Annotated[Optional[int], typer.Option()] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Complete the text as is, without the chat template.")] = False,
) -> None:
    """Print one completion from a registered model, without a server."""
    from stages.deploy import serving
    from stages.deploy.local_model import complete, load_model

    try:
        folder, name, version = serving.resolve_model(model)
    except LmforgeError as exc:
        raise _fail(exc) from None
    lm, tokenizer = load_model(folder)
    text = prompt if raw else tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                            add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer, finish, tokens = complete(lm, tokenizer, ids, max_tokens, temperature, seed)
    typer.echo(answer)
    typer.echo(json.dumps({"model": name, "version": version, "finish_reason": finish, "completion_tokens": tokens,
                           "prompt_tokens": len(ids)}), err=True)
