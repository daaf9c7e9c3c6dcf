"""The hand-written continuous-batching engine vLLM replaced, behind a minimal Ray Serve
deployment: ``/v1/completions`` only (prompt, max_tokens, temperature, seed, ignore_eos), so
``serve_bench.py`` can measure it beside vLLM on the same model, in the same process.
Benchmark baseline only: lmforge serves with vLLM (``stages/deploy/app.py``)."""

import threading
from pathlib import Path

from fastapi import FastAPI, Request
from ray import serve

api = FastAPI()


class HandwrittenServer:
    def __init__(self, model_dir: str, model_name: str, max_batch_size: int):
        self.model_name, self.scheduler, self.tokenizer = model_name, None, None
        threading.Thread(target=self._load, args=(model_dir, max_batch_size), daemon=True).start()

    def _load(self, model_dir: str, max_batch_size: int) -> None:
        from stages.alignment.generate import stop_ids
        from stages.deploy.engine import Engine, load_model
        from stages.deploy.scheduler import Scheduler

        model, tokenizer = load_model(Path(model_dir))
        self.tokenizer = tokenizer
        self.scheduler = Scheduler(Engine(model, tokenizer, stop_ids(tokenizer)), max_batch_size, 0.02)

    @api.get("/health")
    def health(self):
        from fastapi.responses import JSONResponse

        return {"status": "ok"} if self.scheduler else JSONResponse(status_code=503, content={"status": "loading"})

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        from stages.deploy.engine import GenRequest

        body = await request.json()
        ids = self.tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]
        gen = GenRequest(ids, body.get("max_tokens", 16), body.get("temperature", 1.0), 1.0, body.get("seed"), [],
                         body.get("ignore_eos", False))
        text, tokens = "", 0
        async for delta in self.scheduler.generate(gen):
            text, tokens = text + delta.text, delta.completion_tokens
        return {"choices": [{"index": 0, "text": text}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": tokens, "total_tokens": len(ids) + tokens}}


HandwrittenDeployment = serve.deployment(max_ongoing_requests=256)(serve.ingress(api)(HandwrittenServer))


def start(model_dir: Path, name: str, port: int, max_batch_size: int, timeout_s: float = 300) -> str:
    import time

    import httpx

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(HandwrittenDeployment.bind(str(model_dir), name, max_batch_size), name="handwritten", route_prefix="/",
              blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the hand-written engine did not answer {url}/health within {timeout_s:.0f} s")
