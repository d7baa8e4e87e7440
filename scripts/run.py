"""`make run`: migrate, seed, then supervise web, the central worker, beat and regional workers.

Ctrl-C (or SIGTERM) stops every process gracefully: workers finish what they hold.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent


def _manage(*args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=True)  # noqa: S603  # our own manage.py


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings.base")
    regions = [code.strip() for code in env.get("RUN_REGIONS", "sin,dxb,fra").split(",") if code.strip()]
    port = env.get("PORT", "8000")
    env.setdefault("PUBLIC_URL", f"http://127.0.0.1:{port}")
    os.environ.update(env)

    print("==> migrating the central store and every regional store", flush=True)
    _manage("migrate_all")
    _manage("collectstatic", "--noinput", "-v0")
    print("==> seeding demo data", flush=True)
    _manage("seed_demo")

    commands: list[tuple[str, list[str], dict[str, str]]] = [
        ("web", [str(BIN / "uvicorn"), "controlplane.asgi:application", "--host", "127.0.0.1", "--port", port,
                 "--no-access-log"], {}),
        ("central", [str(BIN / "celery"), "-A", "workers", "worker", "-Q", "central", "-c", "1",
                     "-n", "central@%h", "--loglevel", "INFO"], {}),
        ("beat", [str(BIN / "celery"), "-A", "workers", "beat", "--loglevel", "INFO",
                  "-s", str(Path(env.get("DATA_DIR", ROOT / "var")) / "celerybeat-schedule")], {}),
    ]
    for code in regions:
        commands.append((
            f"region.{code}",
            [str(BIN / "celery"), "-A", "workers", "worker", "-Q", f"region.{code}", "-P", "threads",
             "-c", env.get("WORKER_MAX_BATCH", "8"), "-n", f"region-{code}@%h", "--loglevel", "INFO"],
            {"REGION": code},
        ))

    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    for name, argv, extra in commands:
        process = subprocess.Popen(argv, cwd=ROOT, env={**env, **extra})  # noqa: S603  # our own binaries
        processes.append((name, process))
        print(f"==> started {name} (pid {process.pid})", flush=True)

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"==> the system is up: {env['PUBLIC_URL']}/ (admin at /admin/, API docs at /api/docs/); Ctrl-C stops it",
          flush=True)
    exit_code = 0
    while not stopping:
        for name, process in processes:
            if process.poll() is not None:
                print(f"==> {name} exited with {process.returncode}; stopping the rest", file=sys.stderr, flush=True)
                stopping, exit_code = True, 1
                break
        time.sleep(0.5)
    for _, process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for _, process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
