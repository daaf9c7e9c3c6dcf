"""What a request must pass before vLLM's OpenAI app sees it, as ASGI middleware.

vLLM's own app validates what a field may hold (logprobs ranges, a JSON schema, the
context length) and answers in OpenAI's error shape. What it does not do, lmforge does
here, before the body reaches it: the API key on every route (vLLM's ``--api-key`` answers
``{"error": "Unauthorized"}``, not OpenAI's shape), the request-size, ``max_tokens`` and
``n`` caps of ``deploy.server``, the registered model name, and refusing a field vLLM would
drop in silence (its request models log unknown fields at debug level and go on).
The body is read once and handed on unchanged; after it, the client's own ``receive`` is
passed through, so a client that disconnects mid-stream still aborts its request in vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


GENERATION_ROUTES = {"/v1/completions": "completion", "/v1/chat/completions": "chat"}
KEYED_ROUTES = {"/v1/models", *GENERATION_ROUTES}  # /metrics is open: Prometheus scrapes without the key, as from vLLM
METHODS = {"/v1/models": "GET", "/metrics": "GET", "/v1/completions": "POST", "/v1/chat/completions": "POST"}
MAX_SEED = 2**63 - 1  # vLLM takes any integer; a negative one is no seed in OpenAI's API, and torch's is 64-bit signed
CHAT_ROLES = {"system", "developer", "user", "assistant", "tool"}


def error_body(message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict[str, Any]:
    """OpenAI's error shape: what every refusal here, and every error vLLM's app returns, is answered in."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def method_not_allowed(method: str, path: str, allowed: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(405, OpenAI's error body, the Allow header): one answer for a wrong method on any route."""
    body = error_body(f"Method not allowed ({method} {path}); allowed: {allowed or 'none'}", code="method_not_allowed")
    return 405, body, ({"allow": allowed} if allowed else {})


@dataclass(frozen=True)
class Rules:
    model_name: str
    api_key: str | None
    max_request_bytes: int
    max_tokens: int
    max_n: int


def request_fields(kind: str) -> set[str]:
    """The fields vLLM's request model for ``kind`` reads (names and aliases)."""
    if kind == "chat":
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as model
    else:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest as model
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        if field.alias:
            names.add(field.alias)
    return names


def refuse(rules: Rules, raw: bytes, size: int, known: set[str]) -> tuple[int, dict[str, Any]] | None:
    """(status, OpenAI error body) when the request (``size`` bytes, ``raw`` when within the limit) may not reach
    the engine, else None."""
    if size > rules.max_request_bytes:
        return 413, error_body(f"request body is {size} bytes; the limit is {rules.max_request_bytes}")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return 400, error_body(f"request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return 400, error_body("request body must be a JSON object")
    unknown = sorted(set(body) - known)
    if unknown:
        return 400, error_body(f"unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                               code="unsupported_parameter")
    if body.get("model") != rules.model_name:
        return 404, error_body(f"the model '{body.get('model')}' does not exist; this server serves "
                               f"'{rules.model_name}'", param="model", code="model_not_found")
    for field in ("max_tokens", "max_completion_tokens"):
        asked = body.get(field)
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > rules.max_tokens:
            return 400, error_body(f"{field} {asked} is above this server's limit {rules.max_tokens}", param=field)
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        return 400, error_body("set max_completion_tokens or max_tokens (its older name), not both",
                               param="max_completion_tokens")
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > rules.max_n:
        return 400, error_body(f"n {n} is above this server's limit {rules.max_n}", param="n")
    seed = body.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= MAX_SEED:
        return 400, error_body(f"seed must be between 0 and {MAX_SEED}", param="seed")
    stop = body.get("stop")
    if stop == "" or (isinstance(stop, list) and "" in stop):
        return 400, error_body("stop cannot contain an empty string", param="stop")
    if "messages" in body:
        return refuse_messages(body["messages"])
    return None


def refuse_messages(messages: Any) -> tuple[int, dict[str, Any]] | None:
    """What lmforge's chat route refused before vLLM, and vLLM would serve: a message without a role it knows or
    without content, and a conversation with nobody to answer (no user message). vLLM's own checks answer the rest."""
    if not isinstance(messages, list):
        return None  # vLLM's request model says "Input should be a valid list" with param messages
    if not messages:
        return 400, error_body("messages must contain at least one message", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return 400, error_body(f"messages[{i}] must be an object with role and content", param=f"messages.{i}")
        role = message.get("role")
        if role not in CHAT_ROLES:
            return 400, error_body(f"messages[{i}].role must be one of {sorted(CHAT_ROLES)}, not {role!r}",
                                   param=f"messages.{i}.role")
        if message.get("content") is None and not (role == "assistant" and message.get("tool_calls")):
            return 400, error_body(f"messages[{i}] has no content", param=f"messages.{i}.content")
    if not any(m.get("role") == "user" for m in messages):
        return 400, error_body("messages must contain at least one user message", param="messages")
    return None


Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


async def send_json(send: Send, status: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    body = json.dumps(content).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int) -> tuple[bytes, int, bool]:
    """(the body, kept only while within ``limit`` bytes; its size; whether the client is still there)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", size, False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        if not message.get("more_body"):
            return (b"".join(chunks) if size <= limit else b""), size, True


class Admission:
    """ASGI middleware: the engine's routes go to ``engine()`` (vLLM's app, or None while it loads) once admitted;
    every other path goes on to ``app`` (lmforge's own routes: /health, and 404 in OpenAI's shape)."""

    def __init__(self, app, engine: Callable[[], Any], rules: Callable[[], Rules | None],
                 not_ready: Callable[[], tuple[int, dict[str, Any]]]):
        self.app, self.engine, self.rules, self.not_ready = app, engine, rules, not_ready
        self._fields: dict[str, set[str]] = {}

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in METHODS:  # the routes admission guards, and their one method
            return await self.app(scope, receive, send)
        if scope.get("method") != METHODS[path]:
            status, body, headers = method_not_allowed(scope.get("method", ""), path, METHODS[path])
            return await send_json(send, status, body, headers)
        engine, rules = self.engine(), self.rules()
        if engine is None or rules is None:
            return await send_json(send, *self.not_ready())
        if path in KEYED_ROUTES and rules.api_key:
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {rules.api_key}":
                return await send_json(send, 401, error_body(
                    "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key",
                    kind="authentication_error"))
        kind = GENERATION_ROUTES.get(path)
        if kind is None:
            return await engine(scope, receive, send)
        raw, size, connected = await read_body(receive, rules.max_request_bytes)
        if not connected:
            return None
        if kind not in self._fields:
            self._fields[kind] = request_fields(kind)
        refusal = refuse(rules, raw, size, self._fields[kind])
        if refusal is not None:
            return await send_json(send, *refusal)
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()  # then the client's own: its disconnect aborts the request in vLLM

        return await engine(scope, replay, openai_errors(send, kind))


def openai_error(status: int, content: Any, kind: str) -> dict[str, Any]:
    """vLLM's error body in OpenAI's shape: ``type`` a kind (not "Bad Request"), ``code`` a string or null (not the
    HTTP status), ``param`` the request's field (``seed``, not ``body.seed``), and OpenAI's
    ``context_length_exceeded`` on the ``prompt`` or ``messages`` when the model's context is too small."""
    error = content.get("error") if isinstance(content, dict) else None
    if not isinstance(error, dict):
        return error_body(str(content)[:2000], kind="invalid_request_error" if status < 500 else "server_error")
    param = error.get("param")
    if isinstance(param, str):
        param = param.removeprefix("body.") or None
    code = error.get("code")
    if kind == "chat" and param == "logprobs" and "logprobs of" in str(error.get("message", "")):
        param = "top_logprobs"  # chat's count of alternatives is top_logprobs; vLLM names its sampling field
    if "maximum context length" in str(error.get("message", "")):
        param, code = ("messages" if kind == "chat" else "prompt"), "context_length_exceeded"
    kind = {401: "authentication_error", 404: "invalid_request_error"}.get(status)
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return error_body(str(error.get("message", "")), param=param,
                      code=code if isinstance(code, str) else None, kind=kind)


def openai_errors(send: Send, kind: str) -> Send:
    """``send`` that rewrites a JSON error response (status 4xx or 5xx) into OpenAI's shape; the rest passes."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def wrapped(message: dict) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            if message["status"] >= 400 and headers.get(b"content-type", b"").startswith(b"application/json"):
                start = message
                return
            return await send(message)
        if start is None:
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        try:
            content = json.loads(b"".join(chunks))
        except ValueError:
            content = b"".join(chunks).decode("utf-8", "replace")
        await send_json(send, start["status"], openai_error(start["status"], content, kind))

    return wrapped
