"""The OpenAI API as the emulated backend speaks it: request parsing and response bodies.

Sans-IO: bytes in, a parsed :class:`GenerationRequest` or an :class:`APIError` out; response
bodies and server-sent-event frames out as bytes. No sockets and no clock here.

Formats follow the OpenAI API reference and vLLM's OpenAI-compatible server:

* chat streaming: a first chunk ``delta: {"role": "assistant", "content": ""}``, then one chunk
  per token ``delta: {"content": tok}``; the last token's chunk carries ``finish_reason``;
* completions streaming: one chunk per token with ``choices[0].text``;
* ``stream_options.include_usage``: every chunk has ``"usage": null`` and one more chunk with
  ``"choices": []`` and the usage comes before ``data: [DONE]``;
* errors: ``{"error": {"message", "type", "param", "code"}}``.

Extension (documented in quicgw/backends/__init__.py): the final object of every generation
(the non-streaming response; in a stream, the chunk with ``finish_reason`` and the usage chunk)
carries ``"quicgw_timings"``: server-side ``queue_ms``, ``ttft_ms``, ``tpot_ms``, ``e2el_ms``
in MODEL time and the active ``time_scale``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from quicgw.core.tokens import estimate_chat_tokens, estimate_prompt_tokens

# The generated text: words cycled from a fixed list, one token each. Every token is exactly
# CHARS_PER_TOKEN (4) characters, so quicgw.core.tokens.estimate_tokens() of a reply gives back
# its completion_tokens.
FILLER_WORDS = ("the", "fox", "ran", "far", "and", "sat", "low", "yet",
                "one", "day", "its", "new", "way", "was", "set", "out")
FILLER_TOKENS = tuple(" " + w for w in FILLER_WORDS)
_FILLER_JSON = tuple(json.dumps(t).encode() for t in FILLER_TOKENS)


def filler_token(index: int) -> str:
    return FILLER_TOKENS[index % len(FILLER_TOKENS)]


def filler_text(n_tokens: int) -> str:
    """The deterministic text of ``n_tokens`` generated tokens (4 characters each)."""
    return "".join(filler_token(i) for i in range(n_tokens))


class APIError(Exception):
    """A request the server refuses, rendered as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": self.type,
                                     "param": self.param, "code": self.code}}).encode()


# -- requests ---------------------------------------------------------------------------------
# extra="allow": OpenAI clients send many sampling fields (temperature, top_p, seed, ...) that an
# emulator has no use for; they are accepted and ignored, as vLLM accepts fields it ignores.
# strict=True: a JSON string where a number belongs is an error, not silently converted.
class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _StreamOptions(_Lenient):
    include_usage: StrictBool = False


class _ChatMessage(_Lenient):
    role: StrictStr
    content: Any = None

    @field_validator("content")
    @classmethod
    def _text_content(cls, v: Any) -> Any:
        # Checked by hand rather than as a pydantic union: a union's error lists every
        # alternative it tried, which buries the one sentence the client needs.
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, list) and all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in v):
            return v
        raise ValueError('content must be a string or a list of text parts '
                         '({"type": "text", "text": "..."}); the emulated backend takes text only')


PositiveInt = Annotated[StrictInt, Field(ge=1)]


class _GenerationBody(_Lenient):
    model: StrictStr | None = None
    max_tokens: PositiveInt | None = None
    stream: StrictBool = False
    stream_options: _StreamOptions | None = None
    priority: StrictInt = 0  # vLLM's field: lower is served earlier under --queue-policy priority
    n: StrictInt = 1

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported by the emulated backend")
        return v


class _ChatBody(_GenerationBody):
    messages: list[_ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None


class _CompletionBody(_GenerationBody):
    prompt: Any

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        # One prompt: text, token ids, or a one-element list of either. A batch of prompts
        # would need several choices per response, which the emulator does not do.
        if isinstance(v, list) and len(v) == 1 and isinstance(v[0], (str, list)):
            v = v[0]
        if isinstance(v, str):
            return v
        if isinstance(v, list) and v and all(type(t) is int for t in v):
            return v
        raise ValueError("prompt must be a string or a non-empty list of token ids "
                         "(batched prompts are not supported by the emulated backend)")


Kind = Literal["chat", "completion"]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What the engine needs from a chat or completions request."""

    kind: Kind
    model: str | None
    input_tokens: int
    output_tokens: int
    stream: bool
    include_usage: bool
    priority: int


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "json_invalid":
            return f"request body is not valid JSON: {msg.removeprefix('Invalid JSON: ')}"
        if err["type"] == "model_type" and not where:
            return "request body must be a JSON object"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def parse_generation(kind: Kind, body: bytes, default_max_tokens: int) -> GenerationRequest:
    """Parse and validate a ``/v1/chat/completions`` or ``/v1/completions`` body.

    Raises :class:`APIError` (400) with a message naming the offending field.
    """
    schema = _ChatBody if kind == "chat" else _CompletionBody
    try:
        req = schema.model_validate_json(body)
    except ValidationError as e:
        raise APIError(400, _describe(e), code="invalid_value") from None
    if kind == "chat":
        # The parts are already validated as text parts; the shared estimate takes plain dicts.
        input_tokens = estimate_chat_tokens({"content": m.content} for m in req.messages)
        max_tokens = req.max_completion_tokens or req.max_tokens
    else:
        input_tokens = estimate_prompt_tokens(req.prompt)
        max_tokens = req.max_tokens
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed when stream is true",
                       param="stream_options", code="invalid_value")
    return GenerationRequest(
        kind=kind,
        model=req.model,
        input_tokens=input_tokens,
        output_tokens=max_tokens or default_max_tokens,
        stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        priority=req.priority,
    )


# -- responses --------------------------------------------------------------------------------
def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def json_body(obj: Any) -> bytes:
    return _dumps(obj)


def sse(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ResponseFormat:
    """Renders one generation's response: SSE chunks token by token, or the whole object.

    Token chunks are built from precomputed byte prefixes and suffixes rather than json.dumps:
    the streaming hot path writes one chunk per token per running request every iteration.
    """

    __slots__ = ("kind", "id", "created", "model", "include_usage", "_head", "_tail")

    def __init__(self, kind: Kind, request_id: str, created: int, model: str,
                 include_usage: bool) -> None:
        self.kind = kind
        self.id = request_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        head = _dumps({"id": request_id, "object": obj, "created": created, "model": model})
        usage = b',"usage":null' if include_usage else b""
        if kind == "chat":
            self._head = b"data: " + head[:-1] + b',"choices":[{"index":0,"delta":{"content":'
            self._tail = b'},"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n"
        else:
            self._head = b"data: " + head[:-1] + b',"choices":[{"index":0,"text":'
            self._tail = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]' + usage + b"}\n\n"

    # streaming
    def first_chunk(self) -> bytes:
        """Chat streams open with the assistant role (as OpenAI and vLLM send); completions
        streams have no such chunk."""
        if self.kind != "chat":
            return b""
        return sse(self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}]))

    def token_chunk(self, index: int) -> bytes:
        return self._head + _FILLER_JSON[index % len(_FILLER_JSON)] + self._tail

    def last_chunks(self, index: int, usage: dict, timings: dict) -> bytes:
        """The last token's chunk (with finish_reason), the usage chunk if asked, [DONE]."""
        tok = filler_token(index)
        if self.kind == "chat":
            choice = {"index": 0, "delta": {"content": tok}, "logprobs": None,
                      "finish_reason": "length"}
        else:
            choice = {"index": 0, "text": tok, "logprobs": None, "finish_reason": "length",
                      "stop_reason": None}
        out = sse(self._chunk([choice], quicgw_timings=timings))
        if self.include_usage:
            out += sse(self._chunk([], usage=usage, quicgw_timings=timings))
        return out + SSE_DONE

    def _chunk(self, choices: list, **extra: Any) -> dict:
        obj = {"id": self.id,
               "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
               "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:
            obj["usage"] = None
        obj.update(extra)
        return obj

    # non-streaming
    def full_response(self, n_tokens: int, usage: dict, timings: dict) -> bytes:
        text = filler_text(n_tokens)
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": "length", "stop_reason": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                      "stop_reason": None}
            obj = "text_completion"
        return _dumps({"id": self.id, "object": obj, "created": self.created,
                       "model": self.model, "choices": [choice], "usage": usage,
                       "quicgw_timings": timings})


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
