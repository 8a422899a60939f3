"""App builders: the ``import_path`` targets of ``serve_config*.yaml``.

``serve run serve_config.local.yaml`` calls ``build_app(args)``; ``args`` is either
``{"config": "<path to a RouteNLP YAML>"}`` or the RouteNLP config itself, inline.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from ray.serve import Application

from deployments.router import RouterIngress
from deployments.tier import TierDeployment
from routenlp_ray.config.app import RouteNLPConfig, load_config, parse_config
from routenlp_ray.config.releases import ReleasesConfig
from routenlp_ray.config.tiers import TierConfig

HEALTH_CHECK_PERIOD_S = 10.0
HEALTH_CHECK_TIMEOUT_S = 30.0
# A tier replica being stopped (downscale, redeploy) finishes what it holds: its longest call is its timeout.
TIER_SHUTDOWN_GRACE_S = 5.0


def config_from_args(args: dict[str, Any] | RouteNLPConfig) -> RouteNLPConfig:
    """The RouteNLP config in ``args``, with relative paths pinned to the current directory."""
    if isinstance(args, RouteNLPConfig):
        config = args
    elif set(args) == {"config"} and isinstance(args["config"], str):
        config = load_config(args["config"])
    elif set(args) == {"config"}:
        config = parse_config(args["config"], source="serve args 'config'")
    else:
        config = parse_config(args, source="serve args")
    return config.with_absolute_paths(os.getcwd())


def tier_deployment_name(tier: TierConfig) -> str:
    return f"tier-{tier.name}"


def build_tier(tier: TierConfig, releases: ReleasesConfig | None = None) -> Application:
    """A tier served by our ``TierDeployment`` (transformers, replay or OpenAI-compatible engine)."""
    return serve.deployment(
        TierDeployment,
        name=tier_deployment_name(tier),
        autoscaling_config=tier.autoscaling.to_serve(),
        ray_actor_options=tier.resources.to_ray_actor_options(),
        max_ongoing_requests=tier.max_ongoing_requests,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        graceful_shutdown_timeout_s=tier.timeout_s + TIER_SHUTDOWN_GRACE_S,
    ).bind(tier.model_dump(mode="json"), releases=releases.model_dump(mode="json") if releases else None)


def build_app(args: dict[str, Any]) -> Application:
    """The ``import_path`` target: Serve calls it with the application's ``args``.

    The router's ``user_config`` (thresholds, policy artifacts) is set in the serve config
    under ``deployments: [{name: router, user_config: ...}]``.
    """
    return build_routenlp_app(args)


def build_routenlp_app(
    args: dict[str, Any] | RouteNLPConfig, user_config: dict[str, Any] | None = None
) -> Application:
    """The router ingress bound to one deployment per tier (for ``serve.run`` from Python)."""
    config = config_from_args(args)
    tier_apps: dict[str, Application] = {}
    llm_apps: dict[str, Application] = {}
    for tier in config.tiers:
        if tier.engine.type == "vllm":
            from routenlp_ray.engines.serve_llm import build_vllm_tier

            llm_apps[tier.name] = build_vllm_tier(tier)
        else:
            tier_apps[tier.name] = build_tier(tier, config.releases)
    return build_router(config, tier_apps, llm_apps, user_config)


def build_router(
    config: RouteNLPConfig,
    tier_apps: dict[str, Application],
    llm_apps: dict[str, Application] | None = None,
    user_config: dict[str, Any] | None = None,
) -> Application:
    """Bind the router ingress to already-built tier applications.

    ``tier_apps`` are ``TierDeployment`` apps; ``llm_apps`` are Ray Serve LLM ``LLMServer`` apps.
    """
    server = config.server
    ingress = serve.deployment(
        serve.ingress()(RouterIngress),
        name="router",
        autoscaling_config=server.autoscaling.to_serve(),
        ray_actor_options=server.resources.to_ray_actor_options(),
        max_ongoing_requests=server.max_ongoing_requests,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        graceful_shutdown_timeout_s=server.graceful_shutdown_timeout_s,
    )
    if user_config is not None:
        ingress = ingress.options(user_config=user_config)
    monitor = build_monitor(config) if config.monitoring.enabled else None
    return ingress.bind(config.model_dump(mode="json"), tier_apps, llm_apps or None, monitor_handle=monitor)


def build_monitor(config: RouteNLPConfig) -> Application:
    """The coverage monitor: one replica, so every router replica follows one threshold history."""
    from deployments.monitor import CoverageMonitorDeployment

    return serve.deployment(
        CoverageMonitorDeployment,
        name="coverage-monitor",
        num_replicas=1,
        ray_actor_options=config.monitoring.resources.to_ray_actor_options(),
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        # Routers poll it every few seconds: an access-log line per poll would drown the console.
        logging_config={"enable_access_log": False},
    ).bind(config.model_dump(mode="json"))
