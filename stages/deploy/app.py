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
import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from stages.deploy.engine import Engine, GenRequest, load_model
from stages.deploy.config import ServerConfig
from stages.deploy.protocol import (ChatRequest, CompletionRequest, Limits, error_body, new_id, not_implemented,
                                    now, validation_error)
from stages.deploy.scheduler import Scheduler

api = FastAPI(title="lmforge", docs_url=None, redoc_url=None)


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(message, param, code, kind))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and wrong methods answer in OpenAI's error shape, like every other error here."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return _error(404, f"Invalid URL ({where}): no such route", code="not_found")
    if exc.status_code == 405:
        allowed = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
        response = _error(405, f"Method not allowed ({where}); allowed: {allowed or 'none'}",
                          code="method_not_allowed")
        if allowed:
            response.headers["allow"] = allowed
        return response
    return _error(exc.status_code, str(exc.detail))


class LMServer:
    def __init__(self, model_dir: str, model_name: str, server: dict | None = None):
        """``server``: a ``deploy.server`` config (``ServerConfig``) as a dict, as Ray Serve hands it over."""
        settings = ServerConfig(**(server or {}))
        self.model_name, self.api_key = model_name, settings.api_key
        self.limits = Limits(max_tokens=settings.max_tokens, max_n=settings.max_n,
                             max_request_bytes=settings.max_request_bytes)
        self.created = now()
        self.scheduler: Scheduler | None = None  # set, with the tokenizer and context, once the model is in
        self.tokenizer = None
        self.context: int | None = None
        self.load_error: str | None = None
        # the model loads beside the event loop, so /health says "loading" at once instead of the
        # request waiting for a replica that is still reading its weights
        threading.Thread(target=self._load, args=(model_dir, settings), name="load-model", daemon=True).start()

    def _load(self, model_dir: str, settings: ServerConfig) -> None:
        from stages.alignment.generate import stop_ids

        try:
            model, tokenizer = load_model(Path(model_dir), settings.threads)
            self.tokenizer = tokenizer
            self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
            self.scheduler = Scheduler(Engine(model, tokenizer, stop_ids(tokenizer)), settings.max_batch_size,
                                       settings.batch_wait_s)
        except Exception as exc:  # noqa: BLE001 - reported by /health and every request, never a hang
            self.load_error = f"{type(exc).__name__}: {exc}"

    def _not_ready(self) -> JSONResponse | None:
        if self.scheduler is not None:
            return None
        if self.load_error:
            return _error(503, f"the model failed to load: {self.load_error}", code="model_load_failed",
                          kind="server_error")
        return _error(503, "the model is still loading; retry shortly", code="model_loading", kind="server_error")

    # --- helpers -------------------------------------------------------------------
    def _check(self, request: Request, raw: bytes) -> JSONResponse | None:
        if self.api_key:
            header = request.headers.get("authorization", "")
            if header != f"Bearer {self.api_key}":
                return _error(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key",
                              kind="authentication_error")
        not_ready = self._not_ready()
        if not_ready is not None:
            return not_ready
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
        unsupported = not_implemented(body)
        if unsupported is not None:
            message, param = unsupported
            return None, _error(400, message, param=param, code="unsupported_parameter")
        try:
            parsed = model_cls.model_validate(body)
        except ValidationError as exc:
            message, param = validation_error(exc, model_cls)
            return None, _error(400, message, param=param)
        newer = getattr(parsed, "max_completion_tokens", None)
        if newer is not None:
            if parsed.max_tokens is not None and parsed.max_tokens != newer:
                return None, _error(400, "max_tokens and max_completion_tokens differ; send one of them",
                                    param="max_completion_tokens")
            parsed.max_tokens = newer
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

    def _max_tokens(self, parsed, prompt_tokens: int, chat: bool) -> tuple[int | None, JSONResponse | None]:
        """Tokens to generate, or OpenAI's ``context_length_exceeded`` 400 when the prompt and the answer asked
        for do not fit the model's positions (unasked, the default shrinks to what fits)."""
        context = self.context
        asked = parsed.max_tokens
        max_tokens = asked or min(16, self.limits.max_tokens, max(1, (context or 16) - prompt_tokens))
        if context is not None and prompt_tokens + max_tokens > context:
            where = "messages" if chat else "prompt"
            return None, _error(400, f"This model's maximum context length is {context} tokens. However, you "
                                     f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {where}, "
                                     f"{max_tokens} in the completion). Please reduce the length of the {where} "
                                     "or completion.", param=where, code="context_length_exceeded")
        return max_tokens, None

    def _requests(self, parsed, prompt_ids: list[int], max_tokens: int) -> list[GenRequest]:
        return [GenRequest(prompt_ids, max_tokens, parsed.temperature, parsed.top_p, parsed.choice_seed(i),
                           parsed.stops(), parsed.ignore_eos)
                for i in range(parsed.n)]

    async def _collect(self, request: GenRequest) -> tuple[str, str, int]:
        text, finish, tokens = "", "length", 0
        async for delta in self.scheduler.generate(request):
            text += delta.text
            tokens = delta.completion_tokens
            finish = delta.finish_reason or finish
        return text, finish, tokens

    async def _respond(self, parsed, prompt_ids: list[int], chat: bool):
        max_tokens, bad = self._max_tokens(parsed, len(prompt_ids), chat)
        if bad is not None:
            return bad
        kind = "chat.completion" if chat else "text_completion"
        rid = new_id("chatcmpl" if chat else "cmpl")
        requests = self._requests(parsed, prompt_ids, max_tokens)
        if parsed.stream:
            return StreamingResponse(self._sse(requests[0], rid, chat, parsed.include_usage),
                                     media_type="text/event-stream")
        results = await asyncio.gather(*(self._collect(r) for r in requests))
        choices = []
        for i, (text, finish, _) in enumerate(results):
            body = {"message": {"role": "assistant", "content": text}} if chat else {"text": text, "logprobs": None}
            choices.append({"index": i, **body, "finish_reason": finish})
        completion = sum(n for _, _, n in results)
        return {"id": rid, "object": kind, "created": now(), "model": self.model_name, "choices": choices,
                "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
                          "total_tokens": len(prompt_ids) + completion}}

    async def _sse(self, request: GenRequest, rid: str, chat: bool, include_usage: bool):
        created = now()
        completion_tokens = 0
        if chat:
            first = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
            yield f"data: {json.dumps(first)}\n\n"
        async for delta in self.scheduler.generate(request):
            completion_tokens = delta.completion_tokens
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
        if include_usage:  # OpenAI's stream_options.include_usage: one more chunk, empty choices, the usage
            prompt = len(request.prompt_ids)
            usage = {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                     "total_tokens": prompt + completion_tokens}
            last = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                    "model": self.model_name, "choices": [], "usage": usage}
            yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"

    # --- routes --------------------------------------------------------------------
    @api.get("/health")
    def health(self):
        """200 once the model answers; 503 with the reason while it loads or when loading failed."""
        if self.scheduler is not None:
            return {"status": "ok", "model": self.model_name}
        status = "failed" if self.load_error else "loading"
        reason = self.load_error or "loading the model"
        return JSONResponse(status_code=503, content={"status": status, "model": self.model_name, "reason": reason})

    @api.get("/stats")
    def stats(self):
        """``batch_sizes``: how many decoding steps ran with each number of rows."""
        if self.scheduler is None:
            return self._not_ready()
        return {"batch_sizes": {str(k): v for k, v in sorted(self.scheduler.rows_per_step.items())}}

    @api.get("/v1/models")
    def models(self, request: Request):
        bad = self._check(request, b"")  # loading: 503 too, so a client never sees a model it cannot use yet
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


# the Ray Serve deployment: LMServer's routes on the FastAPI app (LMServer itself stays a plain class)
LMDeployment = serve.deployment(max_ongoing_requests=256)(serve.ingress(api)(LMServer))


def build(model_dir: Path, model_name: str, server: ServerConfig):
    return LMDeployment.bind(str(model_dir), model_name, server.model_dump())
