"""Engine: the composition loop, the jitted step runner, sampling and metrics."""

from kvlab.engine.completions import Completion, StreamEvent
from kvlab.engine.dense_reference import DenseReferenceDecoder
from kvlab.engine.engine import Engine
from kvlab.engine.executor import Executor, ModelExecutor
from kvlab.engine.metrics import SLO, RequestRecord, summarize
from kvlab.engine.runner import ModelRunner
from kvlab.engine.sampling import Sampler
from kvlab.engine.xla_options import CommandBuffers, CublasGemmsFrom, XlaDefaults, XlaOptions

__all__ = ["CommandBuffers", "Completion", "CublasGemmsFrom", "DenseReferenceDecoder", "Engine", "Executor",
           "ModelExecutor", "ModelRunner", "RequestRecord", "SLO", "Sampler", "StreamEvent", "XlaDefaults",
           "XlaOptions", "summarize"]
