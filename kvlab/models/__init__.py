"""Models: the Llama-family decoder, configs with presets, loaders and the tokenizer."""

from kvlab.models.config import (
    FrequencyFactors,
    LinearRopeScaling,
    Llama3RopeScaling,
    ModelConfig,
    UnsupportedModelError,
)
from kvlab.models.host_formats import HostFormat, Int4Groups, Int8Channels, SameDtype
from kvlab.models.layer_loop import LayerLoop, ScanLayers, UnrolledLayers, default_layer_loop
from kvlab.models.llama import LlamaModel
from kvlab.models.loading import Checkpoint, CheckpointError, load, load_tokenizer, read_checkpoint
from kvlab.models.qkv_rope import JnpQKVRope, PallasQKVRope, QKVRope, default_qkv_rope
from kvlab.models.streamed_layers import StreamedLayers
from kvlab.models.tokenizer import IncrementalDecoder, Tokenizer

__all__ = ["Checkpoint", "CheckpointError", "FrequencyFactors", "HostFormat", "IncrementalDecoder",
           "Int4Groups", "Int8Channels", "JnpQKVRope", "LayerLoop", "LinearRopeScaling",
           "Llama3RopeScaling", "LlamaModel", "ModelConfig", "PallasQKVRope", "QKVRope", "SameDtype",
           "ScanLayers", "StreamedLayers", "Tokenizer", "UnrolledLayers", "UnsupportedModelError",
           "default_layer_loop", "default_qkv_rope", "load", "load_tokenizer", "read_checkpoint"]
