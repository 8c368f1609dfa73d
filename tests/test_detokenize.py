"""Incremental detokenization (``IncrementalDecoder``) with the bundled SmolLM2 tokenizer (byte-level
BPE from the GGUF file): the streamed pieces add up to ``decode`` of all ids, multi-byte UTF-8
characters split across tokens are held back until complete, and the work per push does not grow
with the length of the request."""

from __future__ import annotations

import re

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlab.models import IncrementalDecoder, load_tokenizer

MULTI_BYTE = ("😀", " 世界", "naïve café", "🇫🇷🎉", "👩‍👩‍👧", " 日本語のテキスト", "Ω≈ç√∫", "Привет", " 🙂\n")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def byte_ids(tok):
    """The single-byte tokens: alone they are bytes of UTF-8 characters, split anywhere (the
    vocabulary lacks a few, such as 0xC0 and 0xFF, which never occur in UTF-8)."""
    ids = [tok.backend.token_to_id(c) for c in tokenizers.pre_tokenizers.ByteLevel.alphabet()]
    ids = [i for i in ids if i is not None]
    assert len(ids) >= 200
    return ids


def test_special_token_ids_are_what_decode_skips(tok):
    dropped = {i for i in range(tok.vocab_size) if tok.decode([i]) == ""}
    assert tok.special_token_ids == dropped and set(tok.eos_token_ids) <= dropped
    assert all(tok.decode([i], skip_special_tokens=False) for i in dropped)


def token_sequences(tok, byte_ids):
    encoded = [tok.encode(t) for t in MULTI_BYTE]
    assert any(len(e) > len(t) for e, t in zip(encoded, MULTI_BYTE)), "some characters span tokens"
    piece = st.one_of(
        st.integers(0, tok.vocab_size - 1).map(lambda t: [t]),           # any token
        st.sampled_from(byte_ids).map(lambda t: [t]),                    # a lone byte
        st.sampled_from(encoded),                                         # whole multi-byte text
        st.sampled_from(sorted(tok.special_token_ids)).map(lambda t: [t]),
    )
    return st.lists(piece, max_size=30).map(lambda ps: [t for p in ps for t in p])


def stream(decoder, ids, sizes, check_prefix=True):
    """Push ``ids`` in chunks of the given sizes (cycled) and return the pieces; with
    ``check_prefix``, check after each push that the text so far begins decode(ids so far)."""
    pieces, i, k = [], 0, 0
    while i < len(ids):
        n = sizes[k % len(sizes)]
        pieces.append(decoder.push(ids[i:i + n]))
        i, k = i + n, k + 1
        full = decoder.tokenizer.decode(ids[:i], skip_special_tokens=decoder.skip_special_tokens)
        assert not check_prefix or full.startswith(decoder.text), (
            f"streamed {decoder.text!r}, but decode says {full!r}")
    return pieces


@settings(max_examples=300)
@given(data=st.data(), skip=st.booleans())
def test_pieces_add_up_to_decode(tok, byte_ids, data, skip):
    ids = data.draw(token_sequences(tok, byte_ids))
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=5))
    decoder = IncrementalDecoder(tok, skip_special_tokens=skip)
    pieces = stream(decoder, ids, sizes)
    assert "".join(pieces) == decoder.text
    full = tok.decode(ids, skip_special_tokens=skip)
    tail = decoder.flush()
    assert "".join(pieces) + tail == decoder.text == full
    assert tail == "" or full.endswith("\ufffd"), "only an incomplete character is held back"
    assert decoder.ids == ids


TOKENIZERS_VERSION = tuple(int(x) for x in re.findall(r"\d+", tokenizers.__version__)[:3])


# DecodeStream came with tokenizers 0.20.4 / 0.21.0, whose version could raise InvalidPrefix
# mid-stream (huggingface/tokenizers#1705, fixed in 0.21.1 by #1716)
@pytest.mark.skipif(TOKENIZERS_VERSION < (0, 21, 1), reason="needs tokenizers >= 0.21.1's DecodeStream")
@settings(max_examples=200)
@given(data=st.data(), skip=st.booleans())
def test_same_pieces_as_hf_decode_stream(tok, byte_ids, data, skip):
    """Token by token, the pieces are those of HF ``tokenizers.decoders.DecodeStream``."""
    ids = data.draw(token_sequences(tok, byte_ids))
    decoder = IncrementalDecoder(tok, skip_special_tokens=skip)
    reference = tokenizers.decoders.DecodeStream(skip_special_tokens=skip)
    ours = [decoder.push([t]) for t in ids]
    theirs = [reference.step(tok.backend, t) for t in ids]
    assert [p for p in ours if p] == [p for p in theirs if p]


def byte_fallback_tokenizer():
    """A Llama-2-style tokenizer (sentencepiece pieces, ``<0xNN>`` byte tokens, the first space
    stripped): decoding a window alone would drop a space or split a character's bytes, so the
    window must start where an earlier piece ended."""
    from tokenizers import AddedToken, decoders, models

    from kvlab.models import Tokenizer

    pieces = ["<unk>", "<s>", "</s>", "▁Hello", "▁world", "!", "▁", "ing", "▁the",
              "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "<0xE4>", "<0xB8>", "<0x96>"]
    backend = tokenizers.Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return Tokenizer(backend, bos_token_id=1, eos_token_ids=(2,))


# pieces and whole characters as byte tokens (😀, 世). ByteFallback judges a run of byte tokens as a
# whole: the bytes of 😀 and the first byte of the next character decode as five U+FFFD until that
# character completes (so the text so far need not begin decode(ids so far)), and a stray byte after
# a complete character turns it into U+FFFD in ``decode`` after it was streamed (as with
# DecodeStream; see the next test)
FALLBACK_PIECES = st.one_of(st.integers(0, 8).map(lambda t: [t]), st.just([9, 10, 11, 12]),
                            st.just([13, 14, 15]))


@settings(max_examples=200)
@given(chunks=st.lists(FALLBACK_PIECES, max_size=12), skip=st.booleans())
def test_pieces_add_up_with_byte_fallback_and_a_stripped_first_space(chunks, skip):
    ids = [t for c in chunks for t in c]
    tok = byte_fallback_tokenizer()
    decoder = IncrementalDecoder(tok, skip_special_tokens=skip)
    pieces = stream(decoder, ids, [1], check_prefix=False)
    assert "".join(pieces) + decoder.flush() == tok.decode(ids, skip_special_tokens=skip)
    if TOKENIZERS_VERSION >= (0, 21, 1):
        reference = tokenizers.decoders.DecodeStream(skip_special_tokens=skip)
        theirs = [reference.step(tok.backend, t) for t in ids]
        assert [p for p in pieces if p] == [p for p in theirs if p]


def test_the_context_keeps_the_space_a_window_alone_would_strip():
    tok = byte_fallback_tokenizer()
    decoder = IncrementalDecoder(tok)
    assert tok.decode([4]) == "world"                           # alone: the first space is stripped
    assert [decoder.push([t]) for t in [3, 4, 5]] == ["Hello", " world", "!"]
    assert [decoder.push([t]) for t in [9, 10, 11]] == ["", "", ""]    # 3 of 😀's 4 bytes
    assert decoder.push([12]) == "😀"
    stray = IncrementalDecoder(tok)                   # E4 9F 9F is 䟟; a stray F0 byte after it
    assert [stray.push([t]) for t in [13, 10, 10, 9]] == ["", "", "䟟", ""]
    assert tok.decode([13, 10, 10, 9]) == "\ufffd" * 4   # makes ByteFallback reject the whole run
    assert stray.flush() == "\ufffd" * 4 and stray.text == "䟟" + "\ufffd" * 4   # nothing is lost


def test_a_character_split_across_tokens_is_held_back_until_complete(tok):
    ids = tok.encode("Hi 😀 世界!")
    assert len(ids) > 5
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push([t]) for t in ids]
    assert "" in pieces, "the emoji's first token alone should complete no character"
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "Hi 😀 世界!" and decoder.flush() == ""
    cut = IncrementalDecoder(tok)                     # the request ends inside the emoji
    head = ids[:pieces.index("") + 1]
    streamed = "".join(cut.push([t]) for t in head)
    assert "\ufffd" not in streamed
    assert streamed + cut.flush() == tok.decode(head) and cut.text.endswith("\ufffd")


def test_text_cut_by_the_caller_keeps_growing_from_the_cut(tok):
    decoder = IncrementalDecoder(tok)
    decoder.push(tok.encode("Hello world, STOP here"))
    i = decoder.text.index("STOP")
    decoder.text = decoder.text[:i]                   # what an engine does at a stop string
    more = decoder.push(tok.encode(" and more"))
    assert more == " and more" and decoder.text == "Hello world,  and more"


def test_special_tokens_skipped_or_shown(tok):
    eos = tok.eos_token_ids[0]
    ids = tok.encode("a") + [eos] + tok.encode(" b")
    skipped, shown = IncrementalDecoder(tok), IncrementalDecoder(tok, skip_special_tokens=False)
    assert [skipped.push([t]) for t in ids] == ["a", "", " b"]
    assert [shown.push([t]) for t in ids] == ["a", tok.token_text(eos), " b"]


def count_decodes(monkeypatch, tok):
    """Record the number of ids of every call to ``tok.decode``."""
    calls: list[int] = []
    decode = tok.decode

    def counting(ids, skip_special_tokens=True):
        calls.append(len(ids))
        return decode(ids, skip_special_tokens=skip_special_tokens)

    monkeypatch.setattr(tok, "decode", counting)
    return calls


def test_work_per_push_does_not_grow_with_length(tok, monkeypatch):
    text = "".join(f"Line {i}: the 🙂 quick brown fox 世界 jumps over naïve dogs. " for i in range(150))
    ids = tok.encode(text)
    assert len(ids) > 3000
    calls = count_decodes(monkeypatch, tok)
    decoder = IncrementalDecoder(tok)
    per_push = []                                     # (decode calls, ids decoded) of each push
    for t in ids:
        before = len(calls), sum(calls)
        decoder.push([t])
        per_push.append((len(calls) - before[0], sum(calls) - before[1]))
    assert decoder.text == text
    first, last = per_push[:500], per_push[-500:]
    assert max(c for c, _ in per_push) <= 2                      # the window, then the next context
    assert max(n for _, n in last) <= max(n for _, n in first) <= 12
    assert sum(n for _, n in per_push) < 6 * len(ids)           # linear; re-decoding all: ~n^2 / 2


def test_a_run_of_skipped_special_tokens_costs_nothing(tok, monkeypatch):
    eos = tok.eos_token_ids[0]
    calls = count_decodes(monkeypatch, tok)
    decoder = IncrementalDecoder(tok)
    decoder.push(tok.encode("done"))
    for _ in range(1000):                             # e.g. EOS again and again under ignore_eos
        assert decoder.push([eos]) == ""
    assert decoder.push(tok.encode(" more")) == " more"
    assert max(calls) <= 4 and len(calls) <= 4
