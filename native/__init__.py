"""Our native inference engine's Python package; it imports nothing from the control plane.

`native.engine` (`Engine`, `EngineError`, `BatchSession`) wraps the C engine in `native/src/`, compiled
as the extension `native._engine` by `make -C native`; `native.tokenizer` needs no compiled code and
loads no weights. `Engine` and `EngineError` are re-exported here lazily, so that importing
`native.tokenizer` never loads the extension. Only `workers` may import this package (and
`controlplane.inference` may import `native.tokenizer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from native.engine import Engine, EngineError

__all__ = ["Engine", "EngineError"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from native import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'native' has no attribute {name!r}")
