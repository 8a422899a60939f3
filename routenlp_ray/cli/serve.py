"""``check-config``, ``serve``, ``export-model`` and ``log``: the service and what it reads and writes."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from routenlp_ray.cli._common import DEFAULT_LOCAL_CONFIG, Subparsers
from routenlp_ray.models.export import SMOLLM2_GGUF, SMOLLM2_SOURCE, default_cache_dir


def serve_executable() -> str | None:
    """Ray's ``serve`` command from this interpreter's environment, even when it is not activated."""
    beside = os.path.join(os.path.dirname(sys.executable), "serve")
    return beside if os.access(beside, os.X_OK) else shutil.which("serve")


def _cmd_check(args: argparse.Namespace) -> int:
    from routenlp_ray.config import load_config

    config = load_config(args.config)
    print(f"{args.config}: OK")
    for tier in config.tiers:
        price = f"${tier.pricing.input_per_1m}/{tier.pricing.output_per_1m} per 1M in/out"
        scaling = f"{tier.autoscaling.min_replicas}-{tier.autoscaling.max_replicas} replicas"
        print(f"  tier {tier.name:<12} {tier.engine.type:<12} {price:<32} {scaling}")
    print(f"  tasks: {', '.join(t.name for t in config.tasks)}")
    print(f"  query log: {config.storage.log_uri}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from routenlp_ray.config import load_config

    load_config(args.config)  # fail fast, with the field and value, before Ray starts
    if args.serve_run:
        serve_bin = serve_executable()
        if serve_bin is None:
            print("the 'serve' command (ray[serve]) is not on PATH", file=sys.stderr)
            return 2
        os.execv(serve_bin, [serve_bin, "run", args.config])
    from routenlp_ray.local_serve import serve_locally

    return serve_locally(args.config)


def _cmd_export_model(args: argparse.Namespace) -> int:
    from routenlp_ray.models.export import export_hf_folder, read_export

    before = read_export(args.out)
    path = export_hf_folder(args.out, source=args.source, gguf_file=args.gguf_file or None,
                            adapter=args.adapter, dtype=args.dtype)
    after = read_export(path)
    state = "up to date" if before == after else "written"
    print(f"{path}: {state} ({after.source}{' + ' + after.adapter if after and after.adapter else ''}, {args.dtype})")
    return 0


def _cmd_log(args: argparse.Namespace) -> int:
    from routenlp_ray.config import load_config
    from routenlp_ray.telemetry import read_records

    log_uri = args.log_uri or load_config(args.config).storage.log_uri
    records = read_records(log_uri, args.stream)
    for record in records[-args.tail:]:
        print(json.dumps(record, ensure_ascii=False))
    return 0


def register(commands: Subparsers) -> None:
    check = commands.add_parser("check-config", help="validate a RouteNLP or serve config file")
    check.add_argument("config", nargs="?", default=DEFAULT_LOCAL_CONFIG)
    check.set_defaults(func=_cmd_check)

    serve = commands.add_parser("serve", help="validate a serve config, then `serve run` it")
    serve.add_argument("config", nargs="?", default=DEFAULT_LOCAL_CONFIG)
    serve.add_argument("--serve-run", action="store_true",
                       help="hand over to Ray's `serve run` instead (Ray's console, signals and bindings)")
    serve.set_defaults(func=_cmd_serve)

    export = commands.add_parser(
        "export-model", help="write a packaged GGUF model (with a LoRA adapter merged in) as a Hugging Face "
        "folder for vLLM, once; nothing is downloaded")
    export.add_argument("--out", default=str(default_cache_dir() / "models" / "smollm2-135m-instruct"),
                        help="the folder to write (default under $ROUTENLP_CACHE or var/cache)")
    export.add_argument("--source", default=SMOLLM2_SOURCE, help="model folder or package:<pkg>")
    export.add_argument("--gguf-file", default=SMOLLM2_GGUF,
                        help="GGUF file inside --source ('' for a folder of safetensors)")
    export.add_argument("--adapter", default=None, help="a LoRA adapter folder to merge in (a distilled student)")
    export.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="weights dtype on disk (the engine may load them in another)")
    export.set_defaults(func=_cmd_export_model)

    log = commands.add_parser("log", help="print the last records of the query log")
    log.add_argument("--config", default=DEFAULT_LOCAL_CONFIG)
    log.add_argument("--log-uri", default=None, help="read this log instead of the config's")
    log.add_argument("--stream", choices=["queries", "feedback", "events"], default="queries")
    log.add_argument("--tail", type=int, default=10)
    log.set_defaults(func=_cmd_log)
