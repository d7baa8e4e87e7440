"""The one typed reader of environment variables; settings read nothing else."""

from __future__ import annotations

import os
from collections.abc import Mapping


class ConfigError(Exception):
    """An environment variable is present but cannot be understood."""


class Env:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def string(self, name: str, default: str) -> str:
        value = self._environ.get(name)
        return default if value is None or value == "" else value

    def optional_string(self, name: str) -> str | None:
        value = self._environ.get(name)
        return None if value is None or value == "" else value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._environ.get(name)
        if value is None or value == "":
            return default
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = self._environ.get(name)
        if value is None or value == "":
            return default
        try:
            parsed = int(value)
        except ValueError as exc:
            raise ConfigError(f"{name}={value!r} is not an integer") from exc
        if minimum is not None and parsed < minimum:
            raise ConfigError(f"{name}={parsed} is below the minimum {minimum}")
        return parsed

    def strings(self, name: str, default: list[str]) -> list[str]:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return list(default)
        return [item.strip() for item in value.split(",") if item.strip()]
