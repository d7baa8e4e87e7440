"""`python -m llama_cpp.server` with llama.cpp's weights in its plain CPU buffers (no extra buffer types).

On CPUs with AMX, llama.cpp puts the weights of supported types (Q4_1 among them) in AMX buffers, and
its AMX matrix multiply crashes the process on the virtual machines this benchmark runs on (a
segmentation fault on the first prompt). The server has no option for it, so this wrapper turns the
model parameter `use_extra_bufts` off, then runs the server's own entry point with the same arguments.
On CPUs without AMX (the machine of the shared baseline) the plain buffers are what llama.cpp uses for
this file anyway, so the anchor is the same server either way.
"""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    import llama_cpp.llama_cpp as bindings  # the module Llama() calls through

    original = bindings.llama_model_default_params

    def plain_params() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = plain_params
    from llama_cpp.server.__main__ import main as server_main

    sys.argv[0] = "llama_cpp.server"
    server_main()  # type: ignore[no-untyped-call]  # llama-cpp-python leaves it untyped

if __name__ == "__main__":
    main()
