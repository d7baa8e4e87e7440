"""`make bench`: every benchmark, each printing our figure next to its anchor's, measured in the same run.

`--tiny` runs each once at a tiny size, to prove it works (used by `make test`; figures meaningless).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings.base")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="one tiny run of each benchmark")
    args = parser.parse_args()

    import django

    django.setup()
    from bench import auth_keys, engine

    print("==> bench 1/4: API-key verification", flush=True)
    result = auth_keys.run(tiny=args.tiny)
    print(f"{'benchmark':<34} {'ours':>14} {'anchor':>14} {'ratio':>8}")
    print(f"{result.name:<34} {result.ours:>14,.0f} {result.anchor:>14,.0f} {result.ratio:>7.1f}x  ({result.unit})")
    print("==> bench 2/4: native engine against llama.cpp", flush=True)
    tiny = ["--tiny"] if args.tiny else []
    # Its own process, so that its peak RSS is the engine's and not Argon2's buffers above.
    engine_run = subprocess.run(  # noqa: S603  # our own benchmark script
        [sys.executable, str(Path(engine.__file__)), *tiny], check=False
    )
    print("==> bench 3/4: serving: our system against llama.cpp's server and the LiteLLM gateway", flush=True)
    # Its own process: it sets up Django against throwaway databases of its own.
    serve_run = subprocess.run(  # noqa: S603  # our own benchmark script
        [sys.executable, str(Path(__file__).with_name("serve.py")), *tiny], check=False
    )
    print("==> bench 4/4: billing: settlement, bulk ledger, quota checks, month close", flush=True)
    # Its own process: it sets up Django against a throwaway database of its own.
    billing_run = subprocess.run(  # noqa: S603  # our own benchmark script
        [sys.executable, str(Path(__file__).with_name("billing.py")), *tiny], check=False
    )
    return engine_run.returncode or serve_run.returncode or billing_run.returncode


if __name__ == "__main__":
    sys.exit(main())
