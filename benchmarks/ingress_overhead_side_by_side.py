"""Side-by-side ingress overhead of two checkouts: one-tier replay config, same settings, same machine.

Run once per checkout, from that checkout, with its code on PYTHONPATH:
    PYTHONPATH=$PWD .venv/bin/python benchmarks/ingress_overhead_side_by_side.py LABEL OUT.json serve_config.local.yaml
"""
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path
import ray
from ray import serve
from routenlp_ray.config.app import load_config
from routenlp_ray.bench import serving as bs

label, out = sys.argv[1], sys.argv[2]
config = load_config(sys.argv[3])
data = config.model_dump(mode="json")
data["tiers"] = [t for t in data["tiers"] if t["name"] != "specialist"]
for t in data["tiers"]:
    t.pop("tasks", None)
config = type(config).model_validate(data) if "tasks" in type(config.tiers[0]).model_fields else None
if config is None:
    from routenlp_ray.config.app import RouteNLPConfig
    config = RouteNLPConfig.model_validate(data)
ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # logical: the old bare ingress asks for 1 CPU
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
serve.start(http_options={"host": "127.0.0.1", "port": port})
work = Path(tempfile.mkdtemp())
kwargs = dict(requests=300, concurrency_levels=(1, 32), rounds=3)
if "apps" in inspect.signature(bs.bench_ingress_overhead).parameters:
    from routenlp_ray.cli import serving_apps
    result = bs.bench_ingress_overhead(config, Path(os.environ.get("ROUTENLP_DATA", "../shared/data")), work, port, apps=serving_apps(), **kwargs)
else:
    result = bs.bench_ingress_overhead(config, Path(os.environ.get("ROUTENLP_DATA", "../shared/data")), work, port, **kwargs)
serve.shutdown(); ray.shutdown()
Path(out).write_text(json.dumps({"code": label, **result}, indent=2))
for level, r in result.items():
    print(label, level, "added p50 %+.1f p99 %+.1f  router p50 %.1f direct p50 %.1f" % (r["added_p50_ms"], r["added_p99_ms"], r["router"]["p50_ms"], r["direct"]["p50_ms"]))
