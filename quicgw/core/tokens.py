"""Token-count estimates from request text, defined once.

The gateway (admission and deadline estimates), the emulated backend (how long prefill takes)
and the simulator must agree on how many tokens a request is, and none of them has the model's
tokenizer (the gateway fronts several models; pulling a tokenizer per model would add a heavy
dependency and per-request CPU). So all of them use this estimate.

The rule: **one token per 4 characters of text, rounded up** (OpenAI's published rule of thumb
for English text with BPE tokenizers such as Llama 3's 128k vocabulary). A prompt given as token
ids counts its ids exactly. Chat requests add the Llama 3 chat template's special tokens:
``<|start_header_id|>role<|end_header_id|>\\n\\n ... <|eot_id|>`` costs 5 tokens per message,
and ``<|begin_of_text|>`` plus the assistant header that primes the reply cost 5 once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

CHARS_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 5
CHAT_TOKENS_PER_CONVERSATION = 5


def estimate_tokens(text: str) -> int:
    """Tokens in ``text``: ceil(characters / 4); the empty string is 0 tokens."""
    return -(-len(text) // CHARS_PER_TOKEN)


def content_text(content: Any) -> str:
    """The text of an OpenAI chat message ``content``: a string, a list of content parts (only
    ``{"type": "text", "text": ...}`` parts count) or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text") or "" for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    raise TypeError(f"message content must be a string or a list of parts, not {type(content).__name__}")


def estimate_chat_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request: each message's text plus the chat template's tokens."""
    total = CHAT_TOKENS_PER_CONVERSATION
    for message in messages:
        total += CHAT_TOKENS_PER_MESSAGE + estimate_tokens(content_text(message.get("content")))
    return total


def estimate_prompt_tokens(prompt: str | list[int] | list[str] | list[list[int]]) -> int:
    """Prompt tokens of a completions request's ``prompt``: text is estimated, token ids are
    counted. A list of prompts (a batch) counts them all."""
    if isinstance(prompt, str):
        return estimate_tokens(prompt)
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return len(prompt)
    return sum(estimate_prompt_tokens(p) for p in prompt)
