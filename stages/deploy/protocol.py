"""OpenAI's request and response shapes for /v1/completions and /v1/chat/completions,
validated with pydantic so a bad request becomes a 400 with OpenAI's error body (which
field, what is wrong) instead of a 500 deep in generation."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator


class Limits(BaseModel):
    max_tokens: int = 256
    max_n: int = 4
    max_prompt_chars: int = 16_000
    max_request_bytes: int = 64_000


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we ignore (user, logit_bias, ...)

    model: str
    max_tokens: Optional[StrictInt] = Field(None, description="Tokens to generate (at least 1).")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: StrictInt = Field(1, ge=1)
    stream: StrictBool = False
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[StrictInt] = None
    ignore_eos: StrictBool = Field(False, description="vLLM's extra: generate max_tokens tokens, no early stop.")

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, value):
        if value is not None and value < 1:
            raise ValueError("max_tokens must be at least 1")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of at most 4 of them")
        return stops

    def stops(self) -> list[str]:
        return list(self.stop or [])


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
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)

    @field_validator("messages")
    @classmethod
    def _last_from_user(cls, value):
        if not any(m.role == "user" for m in value):
            raise ValueError("messages must contain at least one user message")
        return value


def error_body(message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
