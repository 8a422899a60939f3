"""One pilot arm end to end on the real service (``routenlp bench pilot-live``).

The simulated pilot (:mod:`routenlp_ray.bench.pilot`) runs the router in process. This runs one
arm of one seed the way a deployment does, on a running Ray cluster:

1. The week-0 specialist and thresholds are made as the simulated pilot makes them, and published
   as the first release of a release store the service follows.
2. The pilot config (the specialist in front of the frontier) goes under ``serve run``.
3. Each week's queries go over HTTP through the official ``openai`` client. While week ``w``'s
   traffic flows, the loop on week ``w - 1``'s log runs as a Ray job (``ray job submit ... routenlp
   loop run``, what the RayCronJob runs), and whatever it publishes is hot-swapped by the running
   router and tier replicas under that traffic.

Every answer's ``routing`` names the release and thresholds it was decided under, and every failed
request is counted: the report shows which versions served each week and that no request failed
during the swaps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from routenlp_ray.bench.pilot import SPECIALIST, PilotRunner, PilotSettings, Row, plan_seed
from routenlp_ray.bench.pilot_plan import DriftPlan
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.releases import ReleaseStore

APP = "routenlp-pilot"


@dataclass
class LiveCluster:
    """Where the service and the jobs go: a Ray cluster with its job server, and the service's HTTP port."""

    address: str  # the GCS address, "host:port"
    dashboard_url: str  # the job server, "http://host:port"
    http_port: int
    bin_dir: str = field(default_factory=lambda: os.path.dirname(sys.executable))

    def command(self, name: str) -> str:
        beside = os.path.join(self.bin_dir, name)
        return beside if os.access(beside, os.X_OK) else (shutil.which(name) or name)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass
class WeekTraffic:
    """What one week's requests got back."""

    sent: int = 0
    failed: list[str] = field(default_factory=list)
    releases: Counter[str] = field(default_factory=Counter)  # thresholds version -> answers decided under it
    answered_by: Counter[str] = field(default_factory=Counter)
    per_task_answered_by: dict[str, Counter[str]] = field(default_factory=dict)
    cost_usd: float = 0.0
    frontier_cost_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent, "failed": len(self.failed), "failures": self.failed[:10],
            "releases": dict(self.releases), "answered_by": dict(self.answered_by),
            "per_task_answered_by": {t: dict(c) for t, c in sorted(self.per_task_answered_by.items())},
            "cost_reduction": 1 - self.cost_usd / self.frontier_cost_usd if self.frontier_cost_usd else 0.0,
        }


def service_config(config: RouteNLPConfig, workdir: Path, port: int) -> dict[str, Any]:
    """The serve config file ``serve run`` takes: the pilot's cascade, following ``workdir``'s release store."""
    args = config.model_dump(mode="json", exclude_none=True)
    args["releases"] = {"path": str(workdir / "releases"), "poll_interval_s": 1.0}
    args["storage"] = {"log_uri": str(workdir / "querylog"), "spool_dir": str(workdir / "spool")}
    # One replica of each: what is measured is the swap, not scaling, on a laptop's cores.
    for tier in args["tiers"]:
        tier["autoscaling"] = {"min_replicas": 1, "max_replicas": 1}
    args["server"] = {**args.get("server", {}), "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": APP, "route_prefix": "/", "import_path": "deployments.builders:build_app",
                          "args": args}],
    }


def loop_settings(runner: PilotRunner, split: str) -> dict[str, Any]:
    """The targeted arm's LoopSettings as YAML data: what the simulated pilot's Iteration gets."""
    s = runner.settings
    return {
        "student_tier": SPECIALIST, "n_clusters": s.n_clusters, "top_cost_share": s.top_cost_share,
        "targeting": "novel_first", "budget_examples": s.budget_examples, "students": ["targeted"],
        "publish_student": "targeted", "specialist": {"encoding_cache": runner.cache_path},
        "eval_split": split, "eval_per_task": s.calibration_per_task, "calibration": "quality",
        "delta": s.delta, "gate_rule": "meets_target", "gate_cost_tolerance": 0.0, "seed": 0, "eval_seed": 0,
    }


class LiveArm:
    """The targeted arm of one seed, served by ``serve run`` and looped by ``ray job submit``."""

    def __init__(self, runner: PilotRunner, cluster: LiveCluster, seed: int, log: Callable[[str], None] = print,
                 concurrency: int = 4) -> None:
        self.runner, self.cluster, self.seed, self.log = runner, cluster, seed, log
        self.concurrency = concurrency
        self.workdir = runner.workdir / f"live-seed-{seed}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store = ReleaseStore(self.workdir / "releases")
        self.config_file = self.workdir / "service.yaml"
        self.serve_log = self.workdir / "serve.log"
        self._serve: subprocess.Popen[bytes] | None = None

    # -- the service ----------------------------------------------------------------------------------
    def start_service(self, artifact: Path, thresholds: Path) -> None:
        if self.store.current() is None:
            self.store.publish("week-00", adapters={SPECIALIST: artifact}, thresholds=thresholds,
                               report={"source": "pilot week-0 specialist"})
        config = self.runner.config_with_artifact(artifact)
        config = config.model_copy(update={"cascade": config.cascade.model_copy(
            update={"thresholds_path": str(thresholds)})})
        self.config_file.write_text(yaml.safe_dump(service_config(config, self.workdir, self.cluster.http_port)))
        env = {**os.environ, "RAY_ADDRESS": self.cluster.address}
        self._serve = subprocess.Popen(
            [self.cluster.command("serve"), "run", "--non-blocking", str(self.config_file)],
            env=env, cwd=str(Path(__file__).resolve().parents[2]), stdout=open(self.serve_log, "w"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait_ready(timeout_s=600)

    def _wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.cluster.base_url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise TimeoutError(f"the pilot service was not ready in {timeout_s:.0f}s; see {self.serve_log}")

    def stop_service(self) -> None:
        subprocess.run([self.cluster.command("serve"), "shutdown", "-y", "--address", self.cluster.dashboard_url],
                       check=False, capture_output=True, timeout=120)
        if self._serve is not None and self._serve.poll() is None:
            self._serve.terminate()

    # -- traffic ----------------------------------------------------------------------------------------
    def send(self, rows: Sequence[Row], keep_going: threading.Event | None = None) -> WeekTraffic:
        """Every row once, through the openai client; then, while ``keep_going`` is set, the rows again."""
        from openai import OpenAI

        client = OpenAI(base_url=f"{self.cluster.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        week = WeekTraffic()
        lock = threading.Lock()
        position = iter(range(sys.maxsize))

        def next_row() -> Row | None:
            with lock:
                i = next(position)
            if i >= len(rows) and (keep_going is None or not keep_going.is_set()):
                return None
            return rows[i % len(rows)]

        def one(row: Row) -> None:
            try:
                response = client.chat.completions.create(
                    model=f"routenlp/{row.task}", messages=[{"role": "user", "content": row.input}], max_tokens=256)
                routing = response.model_extra["routing"]
                with lock:
                    week.releases[str(routing.get("thresholds_version"))] += 1
                    week.answered_by[str(routing.get("answered_by"))] += 1
                    week.per_task_answered_by.setdefault(row.task, Counter())[str(routing.get("answered_by"))] += 1
                    week.cost_usd += float(routing["frontier_cost_usd"]) - float(routing["saved_usd"])
                    week.frontier_cost_usd += float(routing["frontier_cost_usd"])
            except Exception as exc:  # counted, never raised: a failed request is what is measured
                with lock:
                    week.failed.append(f"{row.id}: {type(exc).__name__}: {exc}"[:300])
            finally:
                with lock:
                    week.sent += 1

        def worker() -> None:
            while (row := next_row()) is not None:
                one(row)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return week

    def serving_release(self) -> str | None:
        import httpx

        try:
            return httpx.get(f"{self.cluster.base_url}/healthz", timeout=5).json().get("release")
        except (httpx.HTTPError, ValueError):
            return None

    # -- the loop as a Ray job ----------------------------------------------------------------------------
    def submit_loop(self, week: int, since: str, data_dir: Path, split: str) -> subprocess.Popen[bytes]:
        """``ray job submit`` of ``routenlp loop run`` on ``week``'s log, calibrating on ``split``; returns the
        waiting submit process."""
        settings = self.workdir / f"loop-week-{week:02d}.yaml"
        settings.write_text(yaml.safe_dump(loop_settings(self.runner, split)))
        entrypoint = [
            self.cluster.command("routenlp"), "loop", "run", "--config", str(self.workdir / "loop-config.yaml"),
            "--settings", str(settings), "--data-dir", str(data_dir), "--workdir", str(self.workdir / "loop"),
            "--run-id", f"week-{week:02d}", "--since", since,
        ]
        runtime_env = {"env_vars": {"ROUTENLP_DATA": str(self.runner.data_dir)}}
        command = [self.cluster.command("ray"), "job", "submit", "--address", self.cluster.dashboard_url,
                   "--submission-id", f"pilot-{self.seed}-week-{week:02d}-{int(time.time())}",
                   "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
        log = open(self.workdir / f"loop-week-{week:02d}.log", "w")
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                cwd=str(Path(__file__).resolve().parents[2]))

    def run(self, weeks: int | None = None) -> dict[str, Any]:
        runner, plan = self.runner, self.runner.plan
        seed_plan = plan_seed(plan, runner.rows, self.seed, runner.settings)
        n_weeks = min(weeks or len(seed_plan.weeks), len(seed_plan.weeks))
        seed_dir = runner.workdir / f"seed-{self.seed}"
        artifact, thresholds = runner.base_release(seed_plan, seed_dir)
        self.start_service(artifact, thresholds)
        # The loop job reads the service's own config (its args), as a cron job on the cluster would.
        service = yaml.safe_load(self.config_file.read_text())
        (self.workdir / "loop-config.yaml").write_text(yaml.safe_dump(service["applications"][0]["args"]))
        data = self.workdir / "data"
        records: list[dict[str, Any]] = []
        job: subprocess.Popen[bytes] | None = None
        try:
            for week in range(n_weeks):
                since = datetime.now(timezone.utc).isoformat()
                started = time.perf_counter()
                # While last week's loop job runs (and the service takes up what it publishes), this week's
                # traffic keeps flowing: the swap happens under load.
                keep_going = threading.Event()
                if job is not None:
                    keep_going.set()
                sent: dict[str, WeekTraffic] = {}
                traffic_thread = threading.Thread(target=lambda: sent.setdefault("w", self.send(
                    seed_plan.weeks[week], keep_going)))
                traffic_thread.start()
                job_outcome = None
                if job is not None:
                    job_outcome = self._finish(job, week - 1)
                    published = job_outcome.get("published")
                    deadline = time.time() + 180
                    while published and self.serving_release() != published and time.time() < deadline:
                        time.sleep(1)
                    if published:
                        job_outcome["served_after_s"] = time.perf_counter() - started
                        job_outcome["router_serves_it"] = self.serving_release() == published
                    time.sleep(3)  # a few more seconds of traffic under the new release
                    keep_going.clear()
                traffic_thread.join()
                traffic = sent["w"]
                record = {"week": week, "since": since, "traffic": traffic.to_dict(),
                          "loop_of_previous_week": job_outcome, "release_after": self.store.current_version(),
                          "seconds": time.perf_counter() - started}
                records.append(record)
                self.log(f"live seed {self.seed} week {week}: {traffic.sent} sent, {len(traffic.failed)} failed, "
                         f"decided under {dict(traffic.releases)}, loop of week {week - 1}: "
                         f"{(job_outcome or {}).get('outcome', '-')}")
                job = None
                if week < n_weeks - 1:
                    job = self.submit_loop(week, since, data, runner.write_calibration(seed_plan, data, week))
            return {"seed": self.seed, "weeks": records, "events": self.release_events(),
                    "failed_requests": sum(r["traffic"]["failed"] for r in records)}
        finally:
            if job is not None and job.poll() is None:
                job.terminate()
            self.stop_service()

    def _finish(self, job: subprocess.Popen[bytes], week: int) -> dict[str, Any]:
        """Wait for the loop job of ``week`` and read its report."""
        rc = job.wait()
        report = self.workdir / "loop" / f"week-{week:02d}" / "report.json"
        outcome: dict[str, Any] = {"job_rc": rc, "outcome": "failed"}
        if report.exists():
            data = json.loads(report.read_text())
            published = data.get("published")
            outcome = {"job_rc": rc, "outcome": "published" if published else "refused", "published": published,
                       "gate_reasons": (data.get("gate") or {}).get("reasons")}
        return outcome

    def release_events(self) -> list[dict[str, Any]]:
        from routenlp_ray.telemetry.querylog import read_records

        return [{"ts": e.get("ts"), "after": e.get("after")}
                for e in read_records(str(self.workdir / "querylog"), "events") if e.get("event") == "release_applied"]


def run_live_arm(config: RouteNLPConfig, plan: DriftPlan, data_dir: str | Path, workdir: str | Path,
                 settings: PilotSettings, cluster: LiveCluster, seed: int = 0, weeks: int | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """The targeted arm of ``seed`` on the real service; returns per-week traffic, loop outcomes and swaps."""
    import ray

    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False)  # the week-0 distillation is a Ray Train job there
    runner = PilotRunner(config, plan, Path(data_dir), Path(workdir), settings, log)
    return LiveArm(runner, cluster, seed, log).run(weeks)


def live_markdown(report: dict[str, Any], plan_name: str, command: str) -> str:
    lines = [f"# Pilot on the real service: {plan_name} plan, targeted arm, seed {report['seed']}", "",
             f"Made by `{command}`. Traffic through the openai client to `serve run`; each week's loop a Ray job "
             "(`ray job submit ... routenlp loop run`) running while the next week's traffic flows.", "",
             f"**Failed requests: {report['failed_requests']}** of {sum(w['traffic']['sent'] for w in report['weeks'])}.",
             "", "| week | sent | failed | cost reduction | decided under (thresholds version: answers) "
             "| loop of the week before | release after |", "|---|---|---|---|---|---|---|"]
    for w in report["weeks"]:
        t, loop = w["traffic"], w["loop_of_previous_week"] or {}
        versions = ", ".join(f"{k}: {v}" for k, v in sorted(t["releases"].items()))
        lines.append(f"| {w['week']} | {t['sent']} | {t['failed']} | {t['cost_reduction']:.1%} | {versions} "
                     f"| {loop.get('outcome', '-')} {loop.get('published') or ''} | {w['release_after']} |")
    lines += ["", "Releases the router applied (its query log's `release_applied` events):", ""]
    lines += [f"- {e['ts']}: {e['after']}" for e in report["events"]] or ["- none"]
    return "\n".join(lines) + "\n"
