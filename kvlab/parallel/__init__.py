"""Several devices: tensor parallelism over a ``jax.sharding.Mesh`` (``TensorParallel``) with the
attention heads laid out per degree (``heads``)."""

from kvlab.parallel.heads import tp_config, tp_heads, tp_weights
from kvlab.parallel.tensor_parallel import TensorParallel, TensorShard

__all__ = ["TensorParallel", "TensorShard", "tp_config", "tp_heads", "tp_weights"]
