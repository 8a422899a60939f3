"""The durable query/feedback log and the router's Prometheus metrics."""

from routenlp_ray.telemetry.metrics import NullRouterMetrics, RayRouterMetrics, RouterMetrics
from routenlp_ray.telemetry.querylog import STREAMS, QueryLog, read_dataset, read_records

__all__ = ["NullRouterMetrics", "QueryLog", "RayRouterMetrics", "RouterMetrics", "STREAMS", "read_dataset", "read_records"]
