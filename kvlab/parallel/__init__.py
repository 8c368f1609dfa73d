"""Several devices: tensor parallelism over a ``jax.sharding.Mesh`` (``TensorParallel``) with the
attention heads laid out per degree (``heads``), and data-parallel replicas behind a ``Router``."""

from kvlab.parallel.heads import tp_config, tp_heads, tp_weights
from kvlab.parallel.router import LeastLoaded, PrefixAware, RoundRobin, Router, RoutingPolicy
from kvlab.parallel.tensor_parallel import TensorParallel, TensorShard

__all__ = ["LeastLoaded", "PrefixAware", "RoundRobin", "Router", "RoutingPolicy", "TensorParallel",
           "TensorShard", "tp_config", "tp_heads", "tp_weights"]
