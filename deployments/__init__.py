"""Ray Serve deployment classes and the app builders named by the serve configs' import_path."""

from deployments.builders import build_app, build_routenlp_app

__all__ = ["build_app", "build_routenlp_app"]
