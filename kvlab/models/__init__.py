"""Models: the Llama-family decoder, configs with presets, loaders and the tokenizer."""

from kvlab.models.config import (
    LinearRopeScaling,
    Llama3RopeScaling,
    ModelConfig,
    UnsupportedModelError,
)
from kvlab.models.llama import LlamaModel
from kvlab.models.loading import CheckpointError, load, load_tokenizer
from kvlab.models.tokenizer import IncrementalDecoder, Tokenizer

__all__ = ["CheckpointError", "IncrementalDecoder", "LinearRopeScaling", "Llama3RopeScaling",
           "LlamaModel", "ModelConfig", "Tokenizer", "UnsupportedModelError", "load",
           "load_tokenizer"]
