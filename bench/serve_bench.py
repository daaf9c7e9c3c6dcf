"""Load test of the OpenAI-compatible server on 127.0.0.1, vLLM (what lmforge serves with)
beside the hand-written engine it replaced, on the same model in the same process, one
after the other: generated tokens/s and p50/p99 latency at several concurrencies
(max_tokens=64, ignore_eos so every answer is the same length), the ratio vLLM / hand-written
at each, and a long run at the highest concurrency checking for 5xx.

    .venv/bin/python bench/serve_bench.py --model models:/lmforge-demo-lm@latest-ppo
    .venv/bin/python bench/serve_bench.py --model PATH/TO/MODEL_FOLDER --engines vllm --requests 1000

Starts each server itself (Ray Serve, 127.0.0.1, a free port) and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx


async def load(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    body = {"model": model, "prompt": "Which language is this text in? Das ist nicht mein Problem.",
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
    latencies: list[float] = []
    codes: dict[int, int] = {}
    tokens = 0
    queue = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        for _ in queue:
            start = time.perf_counter()
            response = await client.post(f"{url}/v1/completions", json=body)
            latencies.append(time.perf_counter() - start)
            codes[response.status_code] = codes.get(response.status_code, 0) + 1
            if response.status_code == 200:
                tokens += response.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {"concurrency": concurrency, "requests": requests, "tokens_per_s": tokens / wall,
            "p50_s": statistics.median(latencies), "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "status_codes": codes, "server_5xx": sum(v for k, v in codes.items() if k >= 500)}


def measure(url: str, name: str, levels: list[int], per_level: int, max_tokens: int, long_requests: int) -> dict:
    asyncio.run(load(url, name, 2, 4, 8))  # warm-up
    rows = [asyncio.run(load(url, name, c, max(c * 3, per_level if c > 1 else 12), max_tokens)) for c in levels]
    long = asyncio.run(load(url, name, max(levels), long_requests, max_tokens)) if long_requests else None
    return {"levels": rows, "long_run": long}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS or a model folder")
    parser.add_argument("--engines", nargs="+", default=["vllm", "handwritten"], choices=["vllm", "handwritten"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests-per-level", type=int, default=64)
    parser.add_argument("--requests", type=int, default=0, help="a long run at the highest concurrency (1000: 5xx check)")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    import sys
    from pathlib import Path

    from stages.core.ray_runtime import ensure_ray
    from stages.deploy import serving
    from stages.deploy.config import ServerConfig

    sys.path.insert(0, str(Path(__file__).parent))
    import handwritten_server

    folder, name, version = serving.resolve_model(args.model)
    results = {}
    for engine in args.engines:
        ensure_ray()
        port = serving.free_port()
        if engine == "vllm":
            url = serving.start(folder, name, ServerConfig(port=port, max_tokens=max(256, args.max_tokens),
                                                           max_num_seqs=max(args.concurrency)))
        else:
            url = handwritten_server.start(folder, name, port, max(args.concurrency))
        try:
            results[engine] = measure(url, name, args.concurrency, args.requests_per_level, args.max_tokens,
                                      args.requests)
        finally:
            serving.stop()
    if len(results) == 2:
        results["vllm_over_handwritten"] = {
            row["concurrency"]: row["tokens_per_s"] / base["tokens_per_s"]
            for row, base in zip(results["vllm"]["levels"], results["handwritten"]["levels"])}
    print(json.dumps({"model": name, "version": version, **results}, indent=1))


if __name__ == "__main__":
    main()
