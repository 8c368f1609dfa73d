"""``Preset``: a composition of kvlab parts standing for a serving system (``kvlab.bench.presets``
holds the seed systems; ``kvlab.bench.custom`` names parts for the command line)."""

from __future__ import annotations

import dataclasses

from kvlab.bench.serving_attention import serving_attention
from kvlab.models.streamed_layers import WeightBudget


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """A composition: its cache and scheduler (fresh objects: one engine each), and what of the
    original system kvlab does not have yet.

    Examples:
        >>> from kvlab.bench.presets import lmdeploy_kv8
        >>> from kvlab.models import LlamaModel, ModelConfig
        >>> engine = lmdeploy_kv8(kv_tokens=256, max_num_seqs=2, token_budget=32, block_tokens=16).engine(
        ...     LlamaModel(ModelConfig.tiny(), seed=0), max_model_len=64)
        >>> engine.storage.kv_format.name, engine.runner.attention.name    # on a CPU: the jnp reference
        ('int8', 'reference')
    """

    name: str
    cache: object
    scheduler: object
    missing: tuple[str, ...] = ()
    weight_budget: WeightBudget | None = None

    def engine(self, model, *, attention=None, **engine_kwargs):
        """``kvlab.Engine(model, cache=..., scheduler=..., attention=..., **engine_kwargs)``, the
        attention backend chosen by ``serving_attention``: ``attention`` (default: the engine's
        default), unless it cannot read the cache's KV format; then the reference, with a warning.
        With a ``weight_budget``, the model's layers that do not fit it are streamed from host
        memory (``model.with_layer_loop``)."""
        from kvlab.engine import Engine

        if self.weight_budget is not None:
            model = model.with_layer_loop(self.weight_budget.layer_loop(model.config, model.dtype))
        return Engine(model, cache=self.cache, scheduler=self.scheduler,
                      attention=serving_attention(model, self.cache, attention), **engine_kwargs)
