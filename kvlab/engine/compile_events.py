"""XLA's compilations counted as they happen, from ``jax.monitoring``'s backend-compile events.

A step signature an engine meets for the first time may already be compiled: the jit cache
belongs to the process, so an earlier engine over the same model shares its executables. The
engine's ``num_compilations`` counts the signatures it ran (the shapes its schedule made, the
same in every process); ``xla_compilations`` counts what XLA compiled for it (what a warm-up
pass still had to do).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> f, x = jax.jit(lambda x: x * 3 + 1), jnp.arange(5.0)
    >>> with CompileCounter() as first:
    ...     _ = f(x)
    >>> with CompileCounter() as again:
    ...     _ = f(x)
    >>> first.count, again.count
    (1, 0)
"""

from __future__ import annotations

import jax

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Context manager: ``count`` the XLA compilations between enter and exit."""

    def __init__(self):
        self.count = 0

    def _on_duration(self, event: str, duration: float, **_) -> None:
        if event == BACKEND_COMPILE:
            self.count += 1

    def __enter__(self) -> CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
