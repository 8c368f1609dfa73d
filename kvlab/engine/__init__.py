"""Engine: the composition loop, the jitted step runner, sampling and metrics."""

from kvlab.engine.engine import Completion, Engine, StreamEvent
from kvlab.engine.metrics import summarize
from kvlab.engine.runner import DenseReferenceDecoder, ModelRunner
from kvlab.engine.sampling import Sampler

__all__ = ["Completion", "DenseReferenceDecoder", "Engine", "ModelRunner", "Sampler", "StreamEvent",
           "summarize"]
