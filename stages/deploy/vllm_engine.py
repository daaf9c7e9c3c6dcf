"""vLLM's engine and its own OpenAI server app, built in the process that serves them.

Why vLLM's app and not our own routes over its engine: its OpenAI layer is what users of
vLLM know (logprobs, ``response_format`` with a JSON schema, ``stream_options``, ``n``,
seeds, prefix caching, Prometheus ``/metrics``, aborting a request whose client left), and
it is kept in step with the engine by vLLM itself. lmforge puts its own gate in front of it
(``stages/deploy/admission.py``: the API key, size and token caps, the registered model name,
fields vLLM would ignore) and serves both from one Ray Serve replica.

Why not Ray Serve LLM's ``build_openai_app``: it runs here on CPU (``accelerator_config:
{kind: cpu}``), but as two deployments (an ingress and the engine's server) that each reserve
CPUs: on two cores the ingress was never scheduled beside the engine, and each request pays a
second hop. vLLM's app inside our one replica is the same engine with one hop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# vLLM's CPU attention kernels (vllm/v1/attention/backends/cpu_attn.py) exist for these head sizes only
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def head_size(model_dir: Path) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def unsupported(model_dir: Path, on_gpu: bool) -> str | None:
    """Why vLLM cannot serve this model folder on this machine, or None."""
    if not on_gpu:
        size = head_size(model_dir)
        if size not in CPU_HEAD_SIZES:
            return (f"vLLM's CPU attention has no kernel for head size {size} (hidden_size / num_attention_heads); "
                    f"it supports {', '.join(map(str, CPU_HEAD_SIZES))}")
    return None


def cli_args(model_dir: Path, served_name: str, *, max_model_len: int | None, dtype: str | None, max_num_seqs: int,
             structured_whitespace: bool = False) -> list[str]:
    """vLLM's own server flags for this model: the one list both the replica and ``bench/`` start from."""
    import torch

    on_gpu = torch.cuda.is_available()
    dtype = dtype or ("bfloat16" if on_gpu else "float32")
    args = ["--model", str(model_dir), "--served-model-name", served_name, "--dtype", dtype,
            "--enable-prefix-caching", "--max-num-seqs", str(max_num_seqs), "--disable-fastapi-docs",
            "--disable-uvicorn-access-log",
            # a small model asked for JSON can fill its whole budget with whitespace inside the object
            "--structured-outputs-config",
            json.dumps({"backend": "xgrammar", "disable_any_whitespace": not structured_whitespace})]
    if max_model_len:
        args += ["--max-model-len", str(max_model_len)]
    from stages.quantize.storage import is_variant

    if is_variant(model_dir):  # a quantize-stage variant: transformers' torchao checkpoint
        args += ["--quantization", "torchao"]
    if not on_gpu:
        args.append("--enforce-eager")  # no graphs to capture on CPU
        # a seeded request whose prompt is split over two steps fails on CPU in vLLM 0.32 ("CPU Generator does not
        # use offset": the rewind is CUDA's), and takes the engine down with it: prompts go in whole on CPU
        args.append("--no-enable-chunked-prefill")
    return args


async def build(args: list[str]) -> tuple[Any, Any]:
    """(vLLM's FastAPI app, its AsyncLLM engine) for ``args``; the engine runs in its own process."""
    import types

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.usage.usage_lib import UsageContext
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.v1.engine.async_llm import AsyncLLM

    parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(args)
    engine_args = AsyncEngineArgs.from_cli_args(parsed)
    config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    engine = AsyncLLM.from_vllm_config(vllm_config=config, usage_context=UsageContext.OPENAI_API_SERVER,
                                       disable_log_stats=False)
    try:
        tasks = await engine.get_supported_tasks()
        app = build_app(parsed, tasks, engine.model_config)
        await init_app_state(engine, app.state, parsed, tasks)
    except BaseException:
        engine.shutdown()
        raise
    # vLLM's engine-error handler reads the uvicorn server its own launcher would have set; there is none here
    app.state.server = types.SimpleNamespace(should_exit=False)
    return app, engine
