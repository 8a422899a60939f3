"""Readiness of the whole application, as the router's ``/readyz`` reports it.

Liveness (``/healthz``) says the router replica answers. Readiness says a request can be
answered by every tier: Serve reports each tier deployment healthy at its target replica count
(a replica counts only once its ``__init__``, engine load and warm-up included, has returned),
and a ``ready`` call through each tier's handle comes back from a warmed replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

# Serve's deployment statuses in which every replica it wants is running and healthy.
READY_STATUSES = frozenset({"HEALTHY", "UPSCALING", "DOWNSCALING"})


def serve_deployment_states(app_name: str) -> dict[str, dict[str, Any]]:
    """Each deployment of ``app_name``: Serve's status and its replica counts by state."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {
        name: {"status": str(getattr(d.status, "value", d.status)), "replicas": dict(d.replica_states)}
        for name, d in app.deployments.items()
    }


class Readiness:
    """Asks Serve about each tier deployment and each tier's handle for a warmed replica.

    ``tier_handles`` maps tier name to a ``TierDeployment`` handle (``ready`` is called);
    ``llm_handles`` are Ray Serve LLM servers, which Serve's own status covers.
    """

    def __init__(
        self,
        tier_handles: Mapping[str, Any],
        llm_handles: Mapping[str, Any] | None = None,
        states: Callable[[str], dict[str, dict[str, Any]]] = serve_deployment_states,
        timeout_s: float = 5.0,
    ) -> None:
        self._tiers = dict(tier_handles)
        self._llm = dict(llm_handles or {})
        self._states = states
        self._timeout_s = timeout_s

    async def check(self) -> dict[str, Any]:
        handles = {**self._tiers, **self._llm}
        app_names = {getattr(h, "app_name", None) for h in handles.values()} - {None, ""}
        states: dict[str, dict[str, Any]] = {}
        for app_name in app_names:
            # serve.status() is a blocking call to the controller; keep it off the event loop.
            states.update(await asyncio.to_thread(self._states, str(app_name)))
        tiers = dict(zip(handles, await asyncio.gather(*(
            self._check_tier(name, handle, states) for name, handle in handles.items()
        ))))
        return {"status": "ready" if all(t["ready"] for t in tiers.values()) else "not_ready", "tiers": tiers}

    async def _check_tier(self, name: str, handle: Any, states: dict[str, dict[str, Any]]) -> dict[str, Any]:
        deployment = getattr(handle, "deployment_name", None)
        state = states.get(str(deployment), {"status": "UNKNOWN", "replicas": {}})
        report: dict[str, Any] = {"deployment": deployment, **state}
        problems = []
        if state["status"] not in READY_STATUSES:
            problems.append(f"deployment status is {state['status']}")
        if state["replicas"].get("RUNNING", 0) < 1:
            problems.append("no running replica")
        if name in self._tiers:
            try:
                answer = await asyncio.wait_for(handle.ready.remote(), timeout=self._timeout_s)
                report["warmed"] = bool(answer.get("warmed"))
                if not report["warmed"]:
                    problems.append("replica not warmed")
            except asyncio.TimeoutError:
                problems.append(f"no replica answered a readiness call within {self._timeout_s}s")
            except Exception as exc:  # a dead or failing tier is a reason, not a crash of the probe
                problems.append(f"readiness call failed: {type(exc).__name__}")
        report["ready"] = not problems
        if problems:
            report["reason"] = "; ".join(problems)
        return report
