import importlib
import pkgutil
from pathlib import Path

import routenlp_ray

PACKAGE_ROOT = Path(routenlp_ray.__file__).parent


def _packages() -> list[str]:
    """Every package of ``routenlp_ray``, found on disk, so a new one is checked without listing it."""
    return ["routenlp_ray"] + sorted(
        info.name for info in pkgutil.walk_packages([str(PACKAGE_ROOT)], prefix="routenlp_ray.") if info.ispkg
    )


def test_every_folder_of_code_is_a_package() -> None:
    folders = {p.parent for p in PACKAGE_ROOT.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(PACKAGE_ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"folders without __init__.py: {missing}"


def test_the_walk_finds_every_package() -> None:
    expected = {"bench", "config", "conformal", "engines", "loop", "models", "monitoring", "recording", "routing",
                "serving", "specialists", "tasks", "telemetry"}
    assert {f"routenlp_ray.{name}" for name in expected} <= set(_packages())


def test_exports_are_sorted_and_importable() -> None:
    for name in _packages():
        module = importlib.import_module(name)
        assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
        assert module.__all__, f"{name}.__all__ is empty"
        assert module.__all__ == sorted(module.__all__), name
        assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ repeats a name"
        for export in module.__all__:
            assert hasattr(module, export), f"{name}.{export}"


def test_every_error_derives_from_the_root() -> None:
    errors = [getattr(routenlp_ray, n) for n in routenlp_ray.__all__ if n.endswith("Error")]
    assert all(issubclass(e, routenlp_ray.RouteNLPError) for e in errors)
