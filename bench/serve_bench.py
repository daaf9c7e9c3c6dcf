"""Load test of the OpenAI-compatible server on 127.0.0.1: generated tokens/s and p50/p99
latency at several concurrencies (max_tokens=64, ignore_eos so every answer is the same
length), the batch sizes the server formed, and a long run checking for 5xx.

    .venv/bin/python bench/serve_bench.py --model models:/lmforge-demo-lm@production
    .venv/bin/python bench/serve_bench.py --model PATH/TO/MODEL_FOLDER --requests 1000

Starts the server itself (Ray Serve, 127.0.0.1, a free port) and stops it.
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

    before = httpx.get(f"{url}/stats").json()["batch_sizes"]
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    after = httpx.get(f"{url}/stats").json()["batch_sizes"]
    formed = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}
    latencies.sort()
    return {"concurrency": concurrency, "requests": requests, "tokens_per_s": tokens / wall,
            "p50_s": statistics.median(latencies), "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "status_codes": codes, "server_5xx": sum(v for k, v in codes.items() if k >= 500),
            "batch_sizes_formed": formed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS or a model folder")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--requests-per-level", type=int, default=48)
    parser.add_argument("--requests", type=int, default=1000, help="the long run at the highest concurrency")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from stages.core.ray_runtime import ensure_ray
    from stages.deploy import serving

    folder, name, version = serving.resolve_model(args.model)
    ensure_ray()
    from stages.deploy.config import ServerConfig

    url = serving.start(folder, name, ServerConfig(port=serving.free_port(), max_tokens=max(256, args.max_tokens),
                                                   threads=args.threads, max_batch_size=max(args.concurrency)))
    try:
        asyncio.run(load(url, name, 2, 4, 8))  # warm-up
        rows = [asyncio.run(load(url, name, c, max(c * 3, args.requests_per_level if c > 1 else 12), args.max_tokens))
                for c in args.concurrency]
        base = rows[0]["tokens_per_s"]
        for row in rows:
            row["speedup_vs_concurrency_1"] = row["tokens_per_s"] / base
        long = asyncio.run(load(url, name, max(args.concurrency), args.requests, args.max_tokens)) if args.requests else None
    finally:
        serving.stop()
    print(json.dumps({"model": name, "version": version, "levels": rows, "long_run": long}, indent=1))


if __name__ == "__main__":
    main()
