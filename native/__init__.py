"""Our native inference engine's Python package; it imports nothing from the control plane.

The C engine, its binding and `native.tokenizer` are built in the engine issue; only `workers`
may import this package (and `controlplane.inference` may import `native.tokenizer`).
"""
