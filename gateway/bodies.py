"""Request bodies of the OpenAI endpoints (pydantic, unknown fields ignored as OpenAI clients send
many) and their conversion into OpenAI-shaped `InvalidRequest` errors naming the bad field."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidRequest

MAX_BODY_BYTES = 4 * 2**20


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(p["text"])
        return "".join(parts)


class Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 non-empty stop sequences")
        return stops

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatBody(Common):
    messages: list[Message] = Field(min_length=1)


class CompletionBody(Common):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt string per request")
            return v[0]
        return v


def parse(raw: bytes, cls: type[BaseModel]) -> Any:
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}",
                             "body_too_large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", "invalid_json")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise InvalidRequest(f"invalid '{loc}': {err['msg']} (got {_short(err.get('input'))})",
                             "invalid_value", loc.split(".")[0] if loc else None) from None


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 80 else s[:77] + "..."
