"""``kvlab.LLM``: the two-line path (vLLM's ``LLM`` habit) on the same parts as everything else.

It loads a model and its tokenizer (``kvlab.models.load``), builds an ``Engine`` with its defaults
(or the parts given), and offers ``generate`` and ``chat``. The composable ``Engine`` stays the
real API: ``llm.engine`` is one, and every keyword here is passed to it.

Examples:
    >>> import kvlab
    >>> llm = kvlab.LLM("smollm2-135m", cache=kvlab.PagedKVCache(num_pages=64, page_size=16))
    >>> out = llm.chat("Name a primary colour.", kvlab.SamplingParams(max_tokens=8))
    >>> out[0].finish_reason in ("stop", "length")
    True
"""

from __future__ import annotations

import jax.numpy as jnp

from kvlab.engine.completions import Completion
from kvlab.engine.engine import Engine
from kvlab.models.loading import load
from kvlab.schedulers.params import SamplingParams


class LLM:
    """A loaded model behind a default engine.

    model: a bundled name (``"smollm2-135m"``), a local transformers directory or a GGUF file;
    dtype: its parameter and activation dtype; engine_kwargs: anything ``kvlab.Engine`` takes
    (``cache=``, ``scheduler=``, ``attention=``, ``max_model_len=``, ``seed=``, ...).
    """

    def __init__(self, model: str = "smollm2-135m", *, dtype=jnp.float32, **engine_kwargs):
        self.model, self.tokenizer = load(model, dtype=dtype)
        self.engine = Engine(self.model, tokenizer=self.tokenizer, **engine_kwargs)

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[Completion]:
        """Complete raw prompts (a text, token ids, or a list of either; no chat template)."""
        return self.engine.generate(prompts, params)

    def chat(self, messages, params: SamplingParams | list[SamplingParams] | None = None,
             *, system: str | None = None) -> list[Completion]:
        """Answer conversations rendered with the model's chat template.

        messages: one user message (a string), one conversation (a list of
        ``{"role": ..., "content": ...}`` dicts), or a list of either; system: a system message
        put first in conversations that have none."""
        if self.tokenizer is None or not self.tokenizer.chat_template:
            raise ValueError("this model has no chat template; use generate() with raw prompts")
        prompts = [self._render(c, system) for c in _conversations(messages)]
        return self.engine.generate(prompts, params)

    def _render(self, conversation: list[dict[str, str]], system: str | None) -> list[int]:
        if system is not None and conversation[0].get("role") != "system":
            conversation = [{"role": "system", "content": system}] + conversation
        text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True)
        return self.tokenizer.backend.encode(text, add_special_tokens=False).ids


def _conversations(messages) -> list[list[dict[str, str]]]:
    """``messages`` as a list of conversations (see ``LLM.chat``)."""
    if isinstance(messages, str):
        return [[{"role": "user", "content": messages}]]
    messages = list(messages)
    if not messages:
        return []
    if isinstance(messages[0], dict):
        return [messages]
    return [[{"role": "user", "content": m}] if isinstance(m, str) else list(m) for m in messages]
