"""What a new user meets first: the ``kvlab`` help, usage errors, a backend the machine cannot run,
and model paths that are not models. All fast: nothing here loads weights or compiles a step."""

from __future__ import annotations

import argparse

import pytest

import kvlab
from kvlab.attention.select import attention_by_name, check_pallas_device
from kvlab.cli import DEMO_PROMPTS, build_parser, main

OWNED_ELSEWHERE = {"bench", "sweep"}        # kvlab/cli_bench.py's subcommands


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def help_problems(parser: argparse.ArgumentParser) -> list[str]:
    """Flags without help, and help text with reStructuredText markup."""
    problems = []
    texts = [("description", parser.description or "")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if not (action.help or "").strip():
            problems.append(f"{name}: no help")
        texts.append((name, action.help or ""))
    problems += [f"{name}: reStructuredText markup in {text!r}" for name, text in texts if "``" in text]
    return problems


def test_every_subcommand_is_listed():
    assert {"generate", "demo", "bench", "sweep"} <= set(subparsers(build_parser()))


@pytest.mark.parametrize("command", ["kvlab", "generate", "demo", "bench", "sweep"])
def test_every_flag_has_plain_help_and_shows_its_default(command):
    parser = build_parser()
    if command != "kvlab":
        parser = subparsers(parser)[command]
    assert help_problems(parser) == []
    text = " ".join(parser.format_help().split())
    assert "``" not in text
    if command in ("generate", "demo"):
        assert "(default: smollm2-135m)" in text and "(default: auto)" in text


def test_help_shows_the_demo_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())          # help lines wrap anywhere
    assert f"(default: {len(DEMO_PROMPTS)})" in out and "(default: 96)" in out
    assert "(default: vllm,sglang,tgi,lmdeploy,trtllm,deepspeed,static)" in out


@pytest.mark.parametrize("argv, message", [
    (["demo", "--num-prompts", "0"],
     f"argument --num-prompts: must be an integer from 1 to {len(DEMO_PROMPTS)}, got 0"),
    (["demo", "--num-prompts", "99"], "must be an integer from 1 to"),
    (["demo", "--num-prompts", "two"], "argument --num-prompts: expected an integer, got 'two'"),
    (["generate", "hi", "--max-tokens", "0"], "argument --max-tokens: must be an integer >= 1, got 0"),
    (["generate", "hi", "--top-k", "-1"], "argument --top-k: must be an integer >= 0, got -1"),
    (["demo", "--compare-kv-tokens", "0"], "argument --compare-kv-tokens: must be an integer >= 1"),
    (["bench", "--num-requests", "0"], "argument --num-requests: must be an integer >= 1, got 0"),
    (["sweep", "--kv-tokens", "-3", "--rates", "1"], "argument --kv-tokens: must be an integer >= 1, got -3"),
    (["bench", "--output-cap", "-1"], "argument --output-cap: must be an integer >= 0, got -1"),
])
def test_bad_numbers_are_usage_errors(argv, message, capsys):
    """``kvlab demo --num-prompts 0`` used to end in KeyError: 'ttft_mean_s'."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("fields, message", [
    (["page_size=abc"], "the vllm preset's page_size must be an integer >= 1, got 'abc'"),
    (["page_size=0"], "the vllm preset's page_size must be an integer >= 1, got 0"),
    (["host_tokens=-1"], "the vllm preset has no field(s) ['host_tokens']"),
])
def test_bad_preset_fields_are_refused_before_anything_is_served(fields, message, capsys):
    """Every preset's fields are checked before the model loads (``--preset vllm,sglang`` with a
    field only vllm has used to serve vllm first and fail on sglang)."""
    argv = ["bench", "--preset", "vllm,sglang", "--model", "no-such-model"]
    assert main(argv + [x for f in fields for x in ("--set", f)]) == 2
    err = capsys.readouterr().err
    assert message in err and "unknown model" not in err
    argv = ["bench", "--preset", "vllm,sglang", "--set", "page_size=32", "--model", "no-such-model"]
    assert main(argv) == 2
    assert "the sglang preset has no field(s) ['page_size']" in capsys.readouterr().err


def test_pallas_on_a_cpu_is_refused_before_anything_loads(capsys):
    for command in (["generate", "hi"], ["demo", "--compare", "none"]):
        assert main([*command, "--attention", "pallas"]) == 2
        err = capsys.readouterr().err
        assert "the Pallas attention kernels need an NVIDIA GPU" in err and "'cpu'" in err
        assert "--attention reference" in err and "PallasAttention(interpret=True)" in err
        assert "interpret mode is supported" not in err


def test_backend_by_name():
    with pytest.raises(ValueError, match="need an NVIDIA GPU.*'cpu'"):
        attention_by_name("pallas", platform="cpu")
    assert isinstance(attention_by_name("pallas", platform="gpu"), kvlab.PallasAttention)
    assert isinstance(attention_by_name("auto", platform="gpu"), kvlab.PallasAttention)
    assert isinstance(attention_by_name("auto", platform="cpu"), kvlab.ReferenceAttention)
    assert isinstance(attention_by_name("reference", platform="gpu"), kvlab.ReferenceAttention)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'; known: auto, pallas, reference"):
        attention_by_name("flash")
    check_pallas_device(interpret=True, platform="cpu")        # interpret mode runs anywhere
    check_pallas_device(platform="gpu")


def test_an_explicit_pallas_backend_on_a_cpu_is_refused_when_the_engine_is_built(tiny_model):
    with pytest.raises(ValueError, match="need an NVIDIA GPU"):
        kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=8, page_size=4),
                     attention=kvlab.PallasAttention())
    kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=8, page_size=4),
                 attention=kvlab.PallasAttention(interpret=True))          # interpret mode is fine
