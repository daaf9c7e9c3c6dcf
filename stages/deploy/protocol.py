"""OpenAI's request and response shapes for /v1/completions and /v1/chat/completions,
validated with pydantic so a bad request becomes a 400 with OpenAI's error body (which
field, what is wrong) instead of a 500 deep in generation."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

MAX_SEED = 2**63 - 1  # torch seeds a generator with a signed 64-bit integer

# OpenAI request fields this server does not implement, with the values that ask for nothing (what clients
# that always send every field send): any other value is refused with a 400 naming the field, never ignored
NOT_IMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "suffix": (None, ""), "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "response_format": (None, {"type": "text"}), "tools": (None, []), "tool_choice": (None, "none"),
    "functions": (None, []), "function_call": (None, "none"), "parallel_tool_calls": (None,),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,), "reasoning_effort": (None,),
    "web_search_options": (None,), "service_tier": (None, "auto", "default"), "store": (None, False),
    "metadata": (None, {}),
}
# accepted and without effect on the answer: an end-user id, which OpenAI keeps for abuse monitoring
NO_EFFECT = {"user"}


class Limits(BaseModel):
    max_tokens: int = 256
    max_n: int = 4
    max_prompt_chars: int = 16_000
    max_request_bytes: int = 64_000


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = Field(False, description="A last chunk with the usage and no choices.")


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a field we do not know is refused, never dropped in silence

    model: str
    max_tokens: Optional[StrictInt] = Field(None, ge=1, description="Tokens to generate (at least 1).")
    user: Optional[str] = Field(None, description="An end-user id (no effect on the answer).")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: StrictInt = Field(1, ge=1)
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[StrictInt] = Field(None, ge=0, le=MAX_SEED)
    ignore_eos: StrictBool = Field(False, description="vLLM's extra: generate max_tokens tokens, no early stop.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of at most 4 of them")
        return stops

    def stops(self) -> list[str]:
        return list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def choice_seed(self, index: int) -> int | None:
        """The seed of the ``index``-th of n choices (each choice its own stream, all reproducible)."""
        return None if self.seed is None else (self.seed + index) % (MAX_SEED + 1)


class CompletionRequest(_Sampling):
    prompt: str = Field(..., min_length=1)

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
        if not isinstance(value, str):
            raise ValueError("prompt must be a string")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: Optional[StrictInt] = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")

    @field_validator("messages")
    @classmethod
    def _last_from_user(cls, value):
        if not any(m.role == "user" for m in value):
            raise ValueError("messages must contain at least one user message")
        return value


def not_implemented(body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, field) for the first field that asks for something this server does not do; the fields
    that ask for nothing are dropped from ``body``."""
    for name, neutral in NOT_IMPLEMENTED.items():
        if name not in body:
            continue
        if any(body[name] == value and isinstance(body[name], bool) == isinstance(value, bool) for value in neutral):
            del body[name]
            continue
        return f"'{name}' is not supported by this server (got {body[name]!r:.80})", name
    return None


def _field_names(model: type[BaseModel]) -> set[str]:
    names = set(model.model_fields)
    for info in model.model_fields.values():
        for inner in getattr(info.annotation, "__args__", ()) or ():
            for leaf in (getattr(inner, "__args__", ()) or ()) + (inner,):
                if isinstance(leaf, type) and issubclass(leaf, BaseModel):
                    names |= _field_names(leaf)
    return names


def validation_error(err: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """(message, param) of a request's first validation error; ``param`` is the request's own path to the
    field (``stop``, ``messages.0.role``), without pydantic's union-branch labels (``stop.str``)."""
    first = err.errors()[0]
    loc = first.get("loc", ())
    if first.get("type") == "extra_forbidden":
        param = ".".join(str(p) for p in loc)
        return f"unrecognized request argument supplied: {param}", param
    known = _field_names(model)
    param = ".".join(str(p) for p in loc if isinstance(p, int) or p in known)
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return f"{param}: {message}", param


def error_body(message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
