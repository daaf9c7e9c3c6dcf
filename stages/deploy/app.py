"""The OpenAI-compatible HTTP API as a Ray Serve application (no postponed annotations:
FastAPI must see `Request` itself in the route signatures).

One deployment holds the model; its scheduler batches concurrent requests continuously
(they join and leave the engine's running batch between decoding steps, up to
``max_batch_size`` rows) and streams per-step deltas back to each request. Routes:
``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (the
tokenizer's chat template), ``GET /health``, ``GET /stats`` (rows per decoding step). Bad requests get a 4xx with
OpenAI's error body; a Bearer key is required when one is configured.
"""


import asyncio
import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve

from stages.deploy.engine import Engine, GenRequest, load_model
from stages.deploy.protocol import ChatRequest, CompletionRequest, Limits, error_body, new_id, now
from stages.deploy.scheduler import Scheduler

api = FastAPI(title="lmforge", docs_url=None, redoc_url=None)


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(message, param, code, kind))


def _validation_message(err: ValidationError) -> tuple[str, str]:
    first = err.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ()))
    return f"{param}: {first.get('msg', 'invalid value')}", param


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(api)
class LMServer:
    def __init__(self, model_dir: str, model_name: str, api_key: str | None = None, limits: dict | None = None,
                 threads: int | None = None, max_batch_size: int = 16, batch_wait_s: float = 0.02):
        from stages.alignment.generate import stop_ids

        model, tokenizer = load_model(Path(model_dir), threads)
        self.scheduler = Scheduler(Engine(model, tokenizer, stop_ids(tokenizer)), max_batch_size, batch_wait_s)
        self.tokenizer = tokenizer
        self.model_name, self.api_key = model_name, api_key
        self.limits = Limits(**(limits or {}))
        self.created = now()

    # --- helpers -------------------------------------------------------------------
    def _check(self, request: Request, raw: bytes) -> JSONResponse | None:
        if self.api_key:
            header = request.headers.get("authorization", "")
            if header != f"Bearer {self.api_key}":
                return _error(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key",
                              kind="authentication_error")
        if len(raw) > self.limits.max_request_bytes:
            return _error(413, f"request body is {len(raw)} bytes; the limit is {self.limits.max_request_bytes}")
        return None

    async def _parse(self, request: Request, model_cls):
        raw = await request.body()
        bad = self._check(request, raw)
        if bad is not None:
            return None, bad
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return None, _error(400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return None, _error(400, "request body must be a JSON object")
        try:
            parsed = model_cls.model_validate(body)
        except ValidationError as exc:
            message, param = _validation_message(exc)
            return None, _error(400, message, param=param)
        if parsed.model != self.model_name:
            return None, _error(404, f"the model '{parsed.model}' does not exist; this server serves "
                                     f"'{self.model_name}'", param="model", code="model_not_found")
        limit = self.limits.max_tokens
        if parsed.max_tokens is not None and parsed.max_tokens > limit:
            return None, _error(400, f"max_tokens {parsed.max_tokens} is above this server's limit {limit}",
                                param="max_tokens")
        if parsed.n > self.limits.max_n:
            return None, _error(400, f"n {parsed.n} is above this server's limit {self.limits.max_n}", param="n")
        if parsed.stream and parsed.n > 1:
            return None, _error(400, "n > 1 is not supported with stream", param="n")
        return parsed, None

    def _requests(self, parsed, prompt_ids: list[int]) -> list[GenRequest]:
        max_tokens = parsed.max_tokens or min(16, self.limits.max_tokens)
        return [GenRequest(prompt_ids, max_tokens, parsed.temperature, parsed.top_p,
                           None if parsed.seed is None else parsed.seed + i, parsed.stops(), parsed.ignore_eos)
                for i in range(parsed.n)]

    async def _collect(self, request: GenRequest) -> tuple[str, str, int]:
        text, finish, tokens = "", "length", 0
        async for delta in self.scheduler.generate(request):
            text += delta.text
            tokens = delta.completion_tokens
            finish = delta.finish_reason or finish
        return text, finish, tokens

    async def _respond(self, parsed, prompt_ids: list[int], chat: bool):
        kind = "chat.completion" if chat else "text_completion"
        rid = new_id("chatcmpl" if chat else "cmpl")
        requests = self._requests(parsed, prompt_ids)
        if parsed.stream:
            return StreamingResponse(self._sse(requests[0], rid, kind, chat), media_type="text/event-stream")
        results = await asyncio.gather(*(self._collect(r) for r in requests))
        choices = []
        for i, (text, finish, _) in enumerate(results):
            body = {"message": {"role": "assistant", "content": text}} if chat else {"text": text, "logprobs": None}
            choices.append({"index": i, **body, "finish_reason": finish})
        completion = sum(n for _, _, n in results)
        return {"id": rid, "object": kind, "created": now(), "model": self.model_name, "choices": choices,
                "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
                          "total_tokens": len(prompt_ids) + completion}}

    async def _sse(self, request: GenRequest, rid: str, kind: str, chat: bool):
        created = now()
        if chat:
            first = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
            yield f"data: {json.dumps(first)}\n\n"
        async for delta in self.scheduler.generate(request):
            if not delta.text and not delta.finish_reason:
                continue
            if chat:
                choice = {"index": 0, "delta": {"content": delta.text} if delta.text else {},
                          "finish_reason": delta.finish_reason}
                chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                         "choices": [choice]}
            else:
                chunk = {"id": rid, "object": "text_completion", "created": created, "model": self.model_name,
                         "choices": [{"index": 0, "text": delta.text, "logprobs": None,
                                      "finish_reason": delta.finish_reason}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    # --- routes --------------------------------------------------------------------
    @api.get("/health")
    def health(self) -> dict:
        return {"status": "ok", "model": self.model_name}

    @api.get("/stats")
    def stats(self) -> dict:
        """``batch_sizes``: how many decoding steps ran with each number of rows."""
        return {"batch_sizes": {str(k): v for k, v in sorted(self.scheduler.rows_per_step.items())}}

    @api.get("/v1/models")
    def models(self, request: Request):
        bad = self._check(request, b"")
        if bad is not None:
            return bad
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "lmforge"}]}

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        parsed, bad = await self._parse(request, CompletionRequest)
        if bad is not None:
            return bad
        if len(parsed.prompt) > self.limits.max_prompt_chars:
            return _error(400, f"prompt is {len(parsed.prompt)} characters; the limit is "
                               f"{self.limits.max_prompt_chars}", param="prompt")
        ids = self.tokenizer(parsed.prompt, add_special_tokens=False)["input_ids"]
        return await self._respond(parsed, ids, chat=False)

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        parsed, bad = await self._parse(request, ChatRequest)
        if bad is not None:
            return bad
        messages = [m.model_dump() for m in parsed.messages]
        if sum(len(m["content"]) for m in messages) > self.limits.max_prompt_chars:
            return _error(400, f"messages exceed {self.limits.max_prompt_chars} characters", param="messages")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return await self._respond(parsed, ids, chat=True)


def build(model_dir: Path, model_name: str, api_key: str | None = None, limits: dict | None = None,
          threads: int | None = None, max_batch_size: int = 16, batch_wait_s: float = 0.02):
    return LMServer.bind(str(model_dir), model_name, api_key, limits, threads, max_batch_size, batch_wait_s)
