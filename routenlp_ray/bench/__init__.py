"""Benchmarks that write their results to files (never timed asserts in tests).

Each ``run_*_benchmark`` is what one ``routenlp bench`` command runs. The serving benchmarks
take their Serve applications as ``ServingApps``, built by ``deployments/`` and handed in by
the CLI, so nothing here imports ``deployments``. Every results file is written by
``write_report`` (``bench/report.py``): JSON stamped with the command line, time and machine,
its Markdown and figures beside it, all or nothing.
"""

from routenlp_ray.bench.load import run_phased_load_benchmark
from routenlp_ray.bench.report import write_report
from routenlp_ray.bench.routing_bench import run_routing_benchmark
from routenlp_ray.bench.serving import ServingApps, run_serving_benchmark
from routenlp_ray.bench.soak import run_soak_benchmark
from routenlp_ray.bench.specialist_bench import run_specialist_benchmark
from routenlp_ray.bench.tasks_bench import run_tasks_benchmark

__all__ = [
    "ServingApps",
    "run_phased_load_benchmark",
    "run_routing_benchmark",
    "run_serving_benchmark",
    "run_soak_benchmark",
    "run_specialist_benchmark",
    "run_tasks_benchmark",
    "write_report",
]
