"""The distillation-routing loop: mine the query log for cheap-tier failures, distill, retrain, publish."""

from routenlp_ray.loop.distill import DistillConfig, DistillExample, DistillResult, train_lora_adapter
from routenlp_ray.loop.iteration import Iteration, IterationResult, LoopSettings
from routenlp_ray.loop.mining import MiningResult, mine, write_cluster_report

__all__ = [
    "DistillConfig",
    "DistillExample",
    "DistillResult",
    "Iteration",
    "IterationResult",
    "LoopSettings",
    "MiningResult",
    "mine",
    "train_lora_adapter",
    "write_cluster_report",
]
