"""With no configuration the system migrates and seeds on SQLite files (the `make run` defaults)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _manage(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DATABASE_URL", "REGION_", "DJANGO_SETTINGS_MODULE"))}
    env["DATA_DIR"] = str(data_dir)
    env["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9")
    return subprocess.run(  # noqa: S603  # the project's own manage.py
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False,
        timeout=600,
    )


def test_migrate_and_seed_on_sqlite_defaults(tmp_path: Path) -> None:
    migrated = _manage(tmp_path, "migrate_all")
    assert migrated.returncode == 0, migrated.stderr
    assert "[9/9] migrated region_hgh" in migrated.stdout
    first = _manage(tmp_path, "seed_demo")
    assert first.returncode == 0, first.stderr
    assert "sovk_" in first.stdout
    second = _manage(tmp_path, "seed_demo")
    assert second.returncode == 0, second.stderr

    central = sqlite3.connect(tmp_path / "db" / "central.sqlite3")
    regions = central.execute("SELECT count(*) FROM fleet_region").fetchone()[0]
    hosts = central.execute("SELECT count(*) FROM fleet_host").fetchone()[0]
    orgs = central.execute("SELECT count(*) FROM tenants_organization").fetchone()[0]
    assert (regions, orgs) == (8, 1)
    assert hosts >= 16
    tables = {row[0] for row in central.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "inference_requestcontent" not in tables
    for code in ("sin", "cgk", "dxb", "ruh", "fra", "iad", "gru", "hgh"):
        regional = sqlite3.connect(tmp_path / "db" / f"region_{code}.sqlite3")
        regional_tables = {row[0] for row in regional.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "inference_requestcontent" in regional_tables
        assert "tenants_organization" not in regional_tables
