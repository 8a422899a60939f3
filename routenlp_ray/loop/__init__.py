"""The distillation-routing loop: mine the query log for cheap-tier failures, distill, retrain, publish."""

from routenlp_ray.loop.distill import DistillConfig, DistillExample, DistillResult, train_lora_adapter
from routenlp_ray.loop.iteration import Iteration, IterationResult, LoopSettings
from routenlp_ray.loop.mining import MiningResult, mine, write_cluster_report
from routenlp_ray.loop.specialist_student import SpecialistRefitSettings, base_pairs, refit_specialist

__all__ = [
    "DistillConfig",
    "DistillExample",
    "DistillResult",
    "Iteration",
    "IterationResult",
    "LoopSettings",
    "MiningResult",
    "SpecialistRefitSettings",
    "base_pairs",
    "mine",
    "refit_specialist",
    "train_lora_adapter",
    "write_cluster_report",
]
