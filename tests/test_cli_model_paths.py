"""``kvlab.models.load`` (and ``kvlab generate --model``) on names and paths that are not models:
each error says what was wrong (the path does not exist, or what it is instead) and what is
accepted, with the bundled names."""

from __future__ import annotations

import pytest

import kvlab
from kvlab.cli import main
from kvlab.models import CheckpointError


def test_a_bare_name_that_is_neither_bundled_nor_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as error:
        kvlab.models.load("my-model")
    message = str(error.value)
    assert "unknown model 'my-model'" in message and "the path 'my-model' does not exist" in message
    assert str(tmp_path / "my-model") in message and "['smollm2-135m']" in message


def test_a_missing_path_through_the_cli(tmp_path, capsys):
    assert main(["generate", "hi", "--model", str(tmp_path / "nope" / "model.gguf")]) == 2
    err = capsys.readouterr().err
    assert f"model path '{tmp_path}/nope/model.gguf' does not exist" in err and "smollm2-135m" in err


def test_a_directory_without_config_json(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        kvlab.models.load(str(tmp_path))
    message = str(error.value)
    assert "is a directory but not a transformers checkpoint: it has no config.json" in message
    assert "config.json + *.safetensors" in message and "GGUF file" in message and "smollm2-135m" in message


def test_a_directory_holding_a_gguf_file_names_it(tmp_path):
    (tmp_path / "model.Q4_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match=r"it holds \['model.Q4_0.gguf'\]: pass one of those files"):
        kvlab.models.load(str(tmp_path))


def test_files_that_are_not_models(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is a file but not a .gguf file .*GGUF magic bytes.*smollm2-135m"):
        kvlab.models.load(str(tmp_path / "notes.txt"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=f"pass its directory, '{tmp_path}'"):
        kvlab.models.load(str(tmp_path / "config.json"))
    (tmp_path / "fake.gguf").write_text("not a gguf file")
    with pytest.raises(CheckpointError, match="ends in .gguf but does not start with the GGUF magic bytes"):
        kvlab.models.load(str(tmp_path / "fake.gguf"))


def test_a_gguf_file_is_recognised_by_its_bytes_not_its_name(tmp_path):
    from kvlab.models import bundled

    renamed = tmp_path / "smollm2.bin"
    renamed.symlink_to(bundled.locate())
    tokenizer = kvlab.models.load_tokenizer(str(renamed))
    assert tokenizer.decode(tokenizer.encode("Paris")) == "Paris"


def test_the_bundled_file_override_must_exist(monkeypatch, tmp_path):
    from kvlab.models import bundled

    monkeypatch.setenv(bundled.ENV_OVERRIDE, str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match=r"\$KVLAB_SMOLLM2_GGUF is set to .*which is not a file"):
        kvlab.models.load("smollm2-135m")
