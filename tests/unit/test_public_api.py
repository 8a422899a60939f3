import routenlp_ray
from routenlp_ray import config, conformal, engines, routing, serving, telemetry


def test_exports_are_sorted_and_importable() -> None:
    for module in (routenlp_ray, config, conformal, engines, routing, serving, telemetry):
        assert module.__all__ == sorted(module.__all__), module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_every_error_derives_from_the_root() -> None:
    errors = [getattr(routenlp_ray, n) for n in routenlp_ray.__all__ if n.endswith("Error")]
    assert all(issubclass(e, routenlp_ray.RouteNLPError) for e in errors)
