"""The import-linter contract of STYLE.md holds (layers; native imports nothing of ours)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(  # noqa: S603  # the project's own linter
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken" in result.stdout


def test_contract_would_catch_an_upward_import(tmp_path: Path) -> None:
    """Positive control: the same linter fails on a tree where the kernel imports tenants."""
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    probe = ROOT / "controlplane" / "core" / "_layer_probe.py"
    probe.write_text("import tenants.models  # noqa: F401\n", encoding="utf-8")
    try:
        lint_imports = Path(sys.executable).with_name("lint-imports")
        result = subprocess.run(  # noqa: S603  # the project's own linter
            [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
        )
    finally:
        probe.unlink()
    assert (ROOT / "pyproject.toml").read_text(encoding="utf-8") == config
    assert result.returncode != 0
    assert "broken" in result.stdout
