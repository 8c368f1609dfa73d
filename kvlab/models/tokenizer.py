"""Tokenizer: HF ``tokenizers`` for the byte-level BPE, ``jinja2`` for chat templates.

Built from a transformers directory (``tokenizer.json`` + ``tokenizer_config.json``) or from a GGUF
file's ``tokenizer.ggml.*`` metadata (``Tokenizer.from_gguf_metadata``).

Examples:
    >>> from kvlab.models import load
    >>> _, tok = load("smollm2-135m")                                  # doctest: +SKIP
    >>> tok.decode(tok.encode("Hello world"))                         # doctest: +SKIP
    'Hello world'
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import tokenizers
from tokenizers import decoders, pre_tokenizers

# Pre-tokenizer regexes of llama.cpp's BPE "pre" types (the split rules each model was trained with).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level_pre_tokenizer(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("default", "gpt2", "gpt-2"):
        return byte_level
    if pre == "smollm":  # digits one by one, then GPT-2 splitting
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    for name, regex in (("llama-bpe", _LLAMA3_SPLIT), ("llama3", _LLAMA3_SPLIT), ("qwen2", _QWEN2_SPLIT)):
        if pre == name:
            return pre_tokenizers.Sequence([
                pre_tokenizers.Split(tokenizers.Regex(regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ValueError(f"GGUF tokenizer pre-type {pre!r} is not supported; supported: default, gpt2, "
                     f"smollm, llama-bpe, qwen2")


def _post_processor_specials(backend: tokenizers.Tokenizer) -> tuple[int | None, tuple[int, ...]]:
    """What ``tokenizer.json``'s post-processor puts around a text: the one token before it (BOS;
    None for none) and the tokens after it (e.g. EOS)."""
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    for before in (0, 1):
        if full[before:before + len(plain)] == plain:
            return (full[0] if before else None), tuple(full[before + len(plain):])
    return None, ()


class Tokenizer:
    """Text <-> token ids, plus the model's chat template."""

    def __init__(self, backend: tokenizers.Tokenizer, *, bos_token_id: int | None,
                 eos_token_ids: tuple[int, ...], chat_template: str | None = None,
                 add_bos: bool = False, suffix_ids: tuple[int, ...] = ()):
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_ids = tuple(eos_token_ids)
        self.chat_template = chat_template
        self.add_bos = add_bos
        self.suffix_ids = tuple(suffix_ids)     # after every text (a post-processor's EOS)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @functools.cached_property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the special tokens: those ``decode(..., skip_special_tokens=True)`` drops."""
        return frozenset(i for i, t in self.backend.get_added_tokens_decoder().items() if t.special)

    def token_text(self, token_id: int) -> str | None:
        """The vocabulary string of one token id (None if out of range)."""
        return self.backend.id_to_token(token_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (with BOS first if the model adds one, and the tokens its
        post-processor puts after a text, as transformers' ``encode`` does)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids + list(self.suffix_ids)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; bytes that do not form UTF-8 characters decode as U+FFFD."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render ``[{"role": ..., "content": ...}, ...]`` with the model's template (jinja2)."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template; pass raw prompts instead")
        import jinja2.sandbox

        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message):
            raise ValueError(f"chat template error: {message}")

        env.globals["raise_exception"] = raise_exception
        bos = self.token_text(self.bos_token_id) if self.bos_token_id is not None else ""
        eos = self.token_text(self.eos_token_ids[0]) if self.eos_token_ids else ""
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos,
            eos_token=eos)

    def encode_chat(self, user_message: str, system: str | None = None) -> list[int]:
        """Token ids of a one-turn chat prompt ready for the assistant's answer."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user_message}]
        return self.backend.encode(self.apply_chat_template(messages), add_special_tokens=False).ids

    # ---- constructors ----------------------------------------------------------------------------
    @classmethod
    def from_hf_directory(cls, path: Path, eos_token_ids: tuple[int, ...]) -> Tokenizer:
        """From a transformers directory: ``tokenizer.json``, plus BOS, ``add_bos_token`` and the
        chat template from ``tokenizer_config.json`` (or ``chat_template.jinja``) when present."""
        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{path} has no tokenizer.json")
        backend = tokenizers.Tokenizer.from_file(str(file))
        cfg_file = Path(path) / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}

        def token_id(value):
            if isinstance(value, dict):
                value = value.get("content")
            return backend.token_to_id(value) if isinstance(value, str) else None

        template = cfg.get("chat_template")
        tmpl_file = Path(path) / "chat_template.jinja"
        if template is None and tmpl_file.is_file():
            template = tmpl_file.read_text()
        bos, add_bos, suffix = token_id(cfg.get("bos_token")), cfg.get("add_bos_token"), ()
        if add_bos is None:    # transformers: tokenizer.json's post-processor decides (Llama 3's: BOS)
            added, suffix = _post_processor_specials(backend)
            add_bos, bos = added is not None, bos if added is None else added
        return cls(backend, bos_token_id=bos, eos_token_ids=eos_token_ids, chat_template=template,
                   add_bos=bool(add_bos), suffix_ids=suffix)

    @classmethod
    def from_gguf_metadata(cls, meta: dict) -> Tokenizer:
        """meta: the GGUF key/values (``tokenizer.ggml.tokens``, ``.merges``, ``.token_type``, ...)."""
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"GGUF tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')")
        tokens = meta["tokenizer.ggml.tokens"]
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        vocab = {tok: i for i, tok in enumerate(tokens)}
        backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges,
                                                             fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = _byte_level_pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
        backend.decoder = decoders.ByteLevel()
        types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
        specials = [tokenizers.AddedToken(tokens[i], special=True, normalized=False)
                    for i, t in enumerate(types) if t in (3, 4)]  # CONTROL, USER_DEFINED
        backend.add_special_tokens(specials)
        eos = meta.get("tokenizer.ggml.eos_token_id")
        eos_ids = (eos,) if eos is not None else ()
        im_end = vocab.get("<|im_end|>")  # chat models end their turns with it
        if im_end is not None and im_end not in eos_ids:
            eos_ids = (*eos_ids, im_end)
        return cls(backend, bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_ids=eos_ids,
                   chat_template=meta.get("tokenizer.chat_template"),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)))


class IncrementalDecoder:
    """Streams the text of a growing list of token ids, decoding only a small window per push.

    ``push(ids)`` returns the newly completed text and appends it to ``text``; ``text`` holds all
    text so far, and a caller may cut it by assignment (an engine cuts it at a stop string). Text
    that may still change is held back: an incomplete UTF-8 sequence (the decoded window ends in
    U+FFFD) until the tokens that complete it arrive. ``flush()`` releases what is held back once
    the request ends, so that the pieces of ``push`` and ``flush`` add up to
    ``tokenizer.decode(ids, skip_special_tokens)``.

    Each push decodes a window of the previous emission's tokens (the context, decoded alone too,
    so decoders that treat a first token specially still see it in place) plus the tokens held back
    plus the new ones: the scheme of HF ``tokenizers.decoders.DecodeStream``, TGI and vLLM's
    ``detokenize_incrementally``, so its cost does not grow with the length of the request. With
    ``skip_special_tokens`` special tokens never enter the window (decode would drop them anyway),
    so a run of them, e.g. EOS under ``ignore_eos``, costs nothing.

    Streamed text is never taken back. With byte-level BPE (``decode`` replaces invalid bytes
    with U+FFFD one sequence at a time) the pieces always add up to ``decode``; a ByteFallback
    decoder (``<0xNN>`` tokens) judges a whole run of byte tokens at once, so garbage output, a
    stray byte right after a complete character, turns that character into U+FFFD in ``decode``
    after it was streamed (HF's DecodeStream streams the same pieces).

    Examples:
        >>> from kvlab.models import load_tokenizer
        >>> tok = load_tokenizer("smollm2-135m")                       # doctest: +SKIP
        >>> decoder = IncrementalDecoder(tok)                          # doctest: +SKIP
        >>> [decoder.push([t]) for t in tok.encode("Hi 😀")]           # doctest: +SKIP
        ['Hi', '', ' 😀']
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []        # every id pushed
        self.text = ""
        self._skip = tokenizer.special_token_ids if skip_special_tokens else frozenset()
        self._window: list[int] = []    # context tokens, then the tokens held back
        self._context = 0               # how many of the window's tokens are context
        self._context_text = ""         # decode(window[:context])

    def push(self, token_ids) -> str:
        """Add tokens; return the newly completed text (also appended to ``text``)."""
        new = [int(t) for t in token_ids]
        self.ids.extend(new)
        kept = [t for t in new if t not in self._skip]
        if not kept:
            return ""
        self._window.extend(kept)
        full = self._decode(self._window)
        if len(full) <= len(self._context_text) or full.endswith("\ufffd"):
            return ""                   # nothing new yet, or a character still incomplete
        return self._emit(full)

    def flush(self) -> str:
        """Release the text held back, incomplete characters as U+FFFD (as ``decode`` shows
        them); call it when the request ends. Returns it (also appended to ``text``)."""
        if len(self._window) == self._context:
            return ""
        return self._emit(self._decode(self._window))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _emit(self, full: str) -> str:
        """The window decodes to ``full``: emit what follows the context's text, and make the
        tokens after the context the next context."""
        if full.startswith(self._context_text):
            new = full[len(self._context_text):]
        else:   # a decoder whose text of a prefix changes when tokens follow: skip what matches
            same = next((i for i, (a, b) in enumerate(zip(full, self._context_text)) if a != b),
                        min(len(full), len(self._context_text)))
            new = full[same:]
        del self._window[:self._context]
        self._context = len(self._window)
        self._context_text = self._decode(self._window)
        self.text += new
        return new
