"""Typed params: one pydantic model per `params.yaml` section, validated once, before any
model or data is touched (nanoGPT's configurator: an unknown or mistyped key is refused).

    from bioreasoner.core import config
    p = config.load("params.yaml", sections=("seed", "model", "sft"))
    p.sft.learning_rate          # typed, range-checked
    p.grpo                       # AttributeError: the stage did not declare `grpo`

A bad value is one `BadInputError` line naming the key (with the nearest valid key for a
typo), the value and the rule; `run_stage` prints it and exits 1, so no out is written.

The training sections use TRL's own field names (`per_device_train_batch_size`,
`train_sampling_strategy`, ...), so `section.trainer_kwargs()` goes straight into
`SFTConfig` / `DPOConfig` / `GRPOConfig` without key-by-key translation; only our own keys
(`lora`, `prompts`, `min_pairs`, `rewards`, ...) are kept out. Reasons behind default values
are in docs/decisions.md, cited as [D<n>].
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_serializer, model_validator

from bioreasoner.core.io import BadInputError, load_yaml
from bioreasoner.core.records import TaskType

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Ratio = Annotated[float, Field(ge=0, le=1)]
TopP = Annotated[float, Field(gt=0, le=1)]
Score = Annotated[float, Field(ge=1, le=5)]  # the judges' 1-5 scale [D5]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]  # versions and rounds become paths
# transformers' SchedulerType values that make sense for these runs
Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]


class Section(BaseModel):
    """Every params mapping: unknown keys are refused, values are frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    OWN_KEYS: ClassVar[frozenset[str]] = frozenset()  # keys that are ours, not the trainer's

    def trainer_kwargs(self) -> dict[str, Any]:
        """The fields that are TRL/transformers config fields, under their own names."""
        return {k: v for k, v in self.model_dump().items() if k not in self.OWN_KEYS}


# --------------------------------------------------------------------------- shared


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ModelCfg(Section):
    base: str = Field(min_length=1)  # `tiny`, a Hugging Face id, or a local folder
    trust_remote_code: StrictBool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Literal["none", "4bit"] = "none"  # 4bit = QLoRA (bitsandbytes nf4, CUDA only)
    # Optional, absent from the embedded default: a GGUF file in the `base` folder (transformers'
    # `gguf_file=`), de-quantized by the base stage into a plain safetensors folder, and its sha256.
    gguf_file: str | None = Field(default=None, min_length=1)
    gguf_sha256: Sha256 | None = None
    # Optional: a Jinja chat template file for a tokenizer that has none (or to replace its own).
    chat_template: str | None = Field(default=None, min_length=1)

    OPTIONAL: ClassVar[tuple[str, ...]] = ("gguf_file", "gguf_sha256", "chat_template")

    @model_validator(mode="after")
    def _qlora_dtype(self) -> ModelCfg:
        if self.quantization == "4bit" and self.dtype == "float32":
            raise ValueError("quantization 4bit computes in bfloat16 or float16: set model.dtype to one of them")
        if (self.gguf_file is None) != (self.gguf_sha256 is None):
            raise ValueError("gguf_file and gguf_sha256 go together: a GGUF file is loaded only against its checksum")
        if self.gguf_file is not None and self.base == "tiny":
            raise ValueError("gguf_file needs `base` to be the folder that holds it, not `tiny`")
        return self

    @model_serializer(mode="wrap")
    def _drop_unset_optional(self, handler: Any) -> dict[str, Any]:
        # the optional keys appear in lineage records only when set: a run without them writes
        # the same bytes as before they existed
        data = handler(self)
        return {k: v for k, v in data.items() if not (k in self.OPTIONAL and v is None)}


class LoraCfg(Section):
    r: PosInt
    alpha: PosInt
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    target_modules: list[str] = Field(min_length=1)
    modules_to_save: list[str] = []


class GenerationCfg(Section):
    temperature: NonNegFloat = 0.7  # 0 = greedy
    top_p: TopP = 1.0
    max_new_tokens: PosInt = 256
    batch_size: PosInt = 32
    # Sampling only: `auto` = the dtype the model was loaded in (model.dtype); `bfloat16` samples
    # from a bf16 copy of an fp32 model (AVX512-BF16 CPUs: ~1.5x the tokens/s) [D18].
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # CPU only: processes sampling batches in parallel, each with its share of the threads; a
    # batch's tokens do not depend on which process ran it. 1 = in this process [D18].
    workers: Annotated[int, Field(ge=1, le=64)] = 1


# `hf`: our KV-cached loop in-process; `vllm`: vLLM's in-process engine (CUDA); `openai`: one
# request per item to an OpenAI-compatible completions endpoint (`vllm serve <model folder>`).
Backend = Literal["hf", "vllm", "openai"]


class EndpointCfg(Section):
    """The connection to an OpenAI-compatible endpoint, shared by `server:` (`ServerCfg`), an
    `openai` judge (`OpenAIJudgeCfg`) and an `openai` teacher (`OpenAITeacherCfg`).

    `endpoints.client.EndpointClient.from_config` turns these fields into the HTTP client (see
    there for what each one bounds). A subclass changes a default by redeclaring the field with
    the same type. These fields come first in each subclass's field order, so they are validated
    (and a bad one reported) before the subclass's own.
    """

    base_url: str = Field(pattern=r"^https?://[^/@\s]+(/\S*)?$")  # e.g. http://127.0.0.1:8000/v1; no user:pass@
    # no default: a key is sent only when you name its variable (the key itself never goes in params)
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # the variable's name, never the key
    timeout_s: PosFloat = 120.0  # per HTTP attempt (connect + each read), never past the deadline
    deadline_s: PosFloat = 600.0  # total per item or request, retries and Retry-After waits included
    max_retries: NonNegInt = 3  # HTTP retries per item or request (429, 5xx, connection errors)
    backoff_s: NonNegFloat = 1.0  # retry n (from 0) waits backoff_s x 2^n, unless Retry-After says otherwise
    max_response_bytes: Annotated[int, Field(ge=1024)] = 1_000_000  # a longer reply is cut and is an error


class ServerCfg(EndpointCfg):
    """A served copy of the model a stage samples (`backend: openai`): the OpenAI-compatible
    `/completions` endpoint that `vllm serve models/merged/<V>` exposes, at `base_url`.

    DVC cannot see what a remote server has loaded: the stage renders prompts with the model
    folder it declares as a dep, and refuses to start unless `<base_url>/models` lists
    `model` (default: that folder's path, the name `vllm serve <folder>` serves it under).
    The connection fields (base_url, api_key_env, timeout_s, deadline_s, ...) are `EndpointCfg`'s.
    """

    model: str | None = None  # served name; null = the stage's model folder as written in dvc.yaml
    max_concurrency: Annotated[int, Field(gt=0, le=256)] = 16  # requests in flight (vLLM batches them)
    add_special_tokens: StrictBool | None = False  # vLLM's field; false = tokenize as the hf path does; null = not sent
    retry_budget: NonNegInt = 100  # HTTP retries per stage, all items together


# --------------------------------------------------------------------------- data stages


class _Source(Section):
    kind: str


class PubMedQASource(_Source):
    kind: Literal["pubmedqa"]
    path: str


class PubMedXMLSource(_Source):
    kind: Literal["pubmed_xml"]
    path: str  # a glob


class OpenAlexJSONSource(_Source):
    kind: Literal["openalex_json"]
    path: str  # a glob


class _LiveSource(_Source):
    max_records: PosInt = 100
    base_url: str
    cache_dir: str
    rate_limit_per_s: PosFloat | None = None
    api_key_env: str | None = None  # the key is read from this environment variable, never from params
    max_retries: NonNegInt = 5
    backoff_s: NonNegFloat = 1.0
    timeout_s: PosFloat = 60.0


class PubMedAPISource(_LiveSource):
    kind: Literal["pubmed_api"]
    query: str = Field(min_length=1)
    page_size: Annotated[int, Field(gt=0, le=200)] = 100
    search_page_size: Annotated[int, Field(gt=0, le=10000)] = 10000
    base_url: str = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils"
    cache_dir: str = ".cache/harvest/pubmed"
    api_key_env: str | None = "NCBI_API_KEY"
    email: str | None = None
    tool: str = "bioreasoner"


class OpenAlexAPISource(_LiveSource):
    kind: Literal["openalex_api"]
    search: str | None = None
    filter: str | None = None
    author_ids: list[str] = []
    per_page: Annotated[int, Field(gt=0, le=200)] = 200
    base_url: str = "https://api.openalex.org"
    cache_dir: str = ".cache/harvest/openalex"
    api_key_env: str | None = "OPENALEX_API_KEY"
    rate_limit_per_s: PosFloat = 10
    mailto: str | None = None

    @model_validator(mode="after")
    def _some_query(self) -> OpenAlexAPISource:
        if not ((self.search or "").strip() or (self.filter or "").strip() or self.author_ids):
            raise ValueError("needs 'search', 'filter' or 'author_ids'")
        return self


SourceCfg = Annotated[
    PubMedQASource | PubMedXMLSource | OpenAlexJSONSource | PubMedAPISource | OpenAlexAPISource,
    Field(discriminator="kind"),
]


class HarvestCfg(Section):
    on_bad_record: Literal["error", "skip"] = "error"
    sources: list[SourceCfg] = Field(min_length=1)


class SplitCfg(Section):
    test_pmids: str


class TokenizerCfg(Section):
    vocab_size: Annotated[int, Field(ge=300)]  # 256 bytes + specials + merges
    min_frequency: PosInt = 2


class TinyArchCfg(Section):
    hidden_size: PosInt
    intermediate_size: PosInt
    num_hidden_layers: PosInt
    num_attention_heads: PosInt
    num_key_value_heads: PosInt
    max_position_embeddings: PosInt
    head_dim: PosInt | None = None  # None: hidden_size / num_attention_heads
    rope_theta: PosFloat = 10000.0
    tie_word_embeddings: StrictBool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyArchCfg:
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return self


class CopyCircuitCfg(Section):
    """`bioreasoner.modeling.copy_circuit.CircuitSpec`, field for field [D11]."""

    code_dim: PosInt = 32
    ngram: PosInt = 3
    prev_scale: PosFloat = 6.0
    prev_pairs: PosInt = 6
    match_gain: PosFloat = 2.0
    flag_score: PosFloat = 14.0
    response_penalty: NonNegFloat = 12.0
    copy_gain: PosFloat = 1.0
    noise: NonNegFloat = 0.02


class BaseStageCfg(Section):
    tokenizer: TokenizerCfg
    tiny: TinyArchCfg
    copy_circuit: CopyCircuitCfg | None = None  # null: a plain random init


class GroupingCfg(Section):
    max_df_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1
    max_df_cap: PosInt = 200
    max_uses_per_paper: PosInt = 2


class BuildTripletsCfg(Section):
    max_source_chars: PosInt
    min_think_chars: NonNegInt
    max_groups_per_type: NonNegInt
    grouping: GroupingCfg = GroupingCfg()


# --------------------------------------------------------------------------- judges


class RubricJudgeCfg(Section):
    kind: Literal["rubric"]
    name: str | None = None


class OpenAIJudgeCfg(EndpointCfg):
    """An OpenAI-compatible chat endpoint (src/bioreasoner/scoring/judge/openai.py); the
    connection fields are `EndpointCfg`'s."""

    kind: Literal["openai"]
    model: str = Field(min_length=1)
    name: str | None = None
    cache_dir: str = ".cache/judge"
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    max_tokens: PosInt = 256  # every request is capped
    timeout_s: PosFloat = 60.0  # a judge's defaults are shorter than EndpointCfg's 120 s ...
    deadline_s: PosFloat = 300.0  # ... and 600 s


JudgeCfg = Annotated[RubricJudgeCfg | OpenAIJudgeCfg, Field(discriminator="kind")]


class PassRule(Section):
    """One pass rule for filter, eval and rewards [D5]: grounded, closed think block of at
    least `min_think_chars`, primary judge's (logic + novelty) / 2 >= `min_score`."""

    min_score: Score = 2.5
    min_think_chars: NonNegInt = 200
    reject_hallucinated: StrictBool = True


class JudgesCfg(Section):
    panel: list[JudgeCfg] = Field(min_length=1)  # the first judge is primary
    pass_rule: PassRule = PassRule()
    # The tribunal's call (scoring/judge/tribunal.py): `primary` = the first judge's pass/fail;
    # `unanimous` = every judge passes it; `majority` = more than half do (a tie fails).
    verdict: Literal["primary", "unanimous", "majority"] = "primary"
    max_concurrency: PosInt = 8  # judge requests in flight (items x judges); the rubric runs inline
    fail_fast_after: PosInt = 20  # judge error rate checked over the first N items ...
    max_error_rate: Ratio = 0.5  # ... the stage stops (nothing written) above this share
    retry_budget: NonNegInt = 200  # HTTP retries allowed per stage across all items

    @model_validator(mode="after")
    def _unique_names(self) -> JudgesCfg:
        names = [j.name or (j.kind if j.kind == "rubric" else f"openai:{j.model}") for j in self.panel]
        if len(set(names)) != len(names):
            raise ValueError(f"judge names must be unique, got {names} (set `name:` to tell them apart)")
        return self


# --------------------------------------------------------------------------- teacher


class ExtractiveTeacherCfg(Section):
    """The embedded default: build_triplets' deterministic references, passed through unchanged."""

    kind: Literal["extractive"]


class OpenAITeacherCfg(EndpointCfg):
    """An LLM teacher behind an OpenAI-compatible chat endpoint (src/bioreasoner/tasks/llm_teacher.py);
    the connection fields are `EndpointCfg`'s."""

    kind: Literal["openai"]
    model: str = Field(min_length=1)
    cache_dir: str = ".cache/teacher"
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7  # > 0: a retry with a new seed is a new answer
    max_tokens: PosInt = 1024  # every request is capped
    max_concurrency: PosInt = 8  # requests in flight
    requests_per_second: PosFloat | None = None  # polite rate limit; null = none
    retry_budget: NonNegInt = 200  # HTTP retries for the whole stage; spent and needed: the stage fails
    budget_s: PosFloat | None = None  # wall-clock budget for the whole stage; passed: the stage fails
    max_attempts: PosInt = 3  # responses asked per task (a new seed each) until one passes the rules
    on_reject: Literal["fallback", "drop"] = "fallback"  # no passing response: extractive reference, or no task
    min_think_chars: NonNegInt = 200  # the pass rule's floor [D5]
    fail_fast_after: PosInt = 20  # over the first N tasks ...
    max_reject_rate: Ratio = 0.5  # ... more than this share without an accepted response stops the stage
    price_prompt_per_mtok: NonNegFloat | None = None  # price per million prompt tokens, for the cost estimate
    price_completion_per_mtok: NonNegFloat | None = None  # ... per million completion tokens


TeacherCfg = Annotated[ExtractiveTeacherCfg | OpenAITeacherCfg, Field(discriminator="kind")]


# --------------------------------------------------------------------------- training


class _TrainerFields(Section):
    """Fields shared by the TRL trainers, under TRL's names."""

    learning_rate: PosFloat
    lr_scheduler_type: Scheduler = "linear"
    warmup_steps: NonNegInt = 0
    num_train_epochs: PosFloat = 1.0
    max_steps: Annotated[int, Field(ge=-1)] = -1  # > 0 overrides epochs (TRL's convention)
    per_device_train_batch_size: PosInt = 8
    gradient_accumulation_steps: PosInt = 1
    gradient_checkpointing: StrictBool = False
    # Mixed precision (autocast; trainable weights stay in model.dtype). null = on when
    # model.dtype is bfloat16. On AVX512-BF16 CPUs true is ~1.6x faster per step [D18].
    bf16: StrictBool | None = None
    logging_steps: PosInt = 5
    save_steps: PosInt = 25

    @model_validator(mode="after")
    def _steps(self) -> _TrainerFields:
        if self.max_steps == 0:
            raise ValueError("max_steps must be -1 (use num_train_epochs) or > 0")
        return self


class _Trainer(_TrainerFields):
    """A LoRA training stage."""

    OWN_KEYS: ClassVar[frozenset[str]] = frozenset({"lora"})
    lora: LoraCfg


class PretrainCfg(_TrainerFields):
    """Full-parameter causal-LM pre-training of the tiny base (SFTConfig fields) [D11]."""

    OWN_KEYS: ClassVar[frozenset[str]] = frozenset({"validation_every", "validation_max_tasks"})
    weight_decay: NonNegFloat = 0.0
    max_length: PosInt = 1024
    validation_every: Annotated[int, Field(ge=2)] = 10  # every N-th train task is held out to measure copying
    validation_max_tasks: PosInt = 80  # of those, how many the copy check reads


class SFTCfg(_Trainer):
    train_sampling_strategy: Literal["random", "sequential", "group_by_length"] = "random"
    max_length: PosInt = 1024
    packing: StrictBool = False
    padding_free: StrictBool = False


class DPOCfg(_Trainer):
    OWN_KEYS: ClassVar[frozenset[str]] = frozenset({"lora", "min_pairs"})
    beta: PosFloat = 0.1
    max_length: PosInt = 1024
    precompute_ref_log_probs: StrictBool = False
    min_pairs: PosInt = 100  # fewer pairs: a loud warning and `underpowered: true` [D3]


class PairsCfg(Section):
    min_delta: NonNegFloat = 0.0
    pairs_per_prompt: PosInt = 1


class RoundCfg(Section):
    policy: Name  # a version in merge.versions: models/merged/<policy> samples this round
    mode: Literal["distill", "best_of_n"]
    prompts: NonNegInt = 0  # train tasks drawn (seeded); 0 = all
    samples_per_prompt: PosInt = 1
    force_think: StrictBool = False
    backend: Backend = "hf"
    server: ServerCfg | None = None  # backend openai: where the policy is served
    generation: GenerationCfg = GenerationCfg()
    pairs: PairsCfg = PairsCfg()
    dpo: dict[str, Any] = {}  # overrides of the shared `dpo:` section, validated merged

    @model_validator(mode="after")
    def _best_of_n_needs_samples(self) -> RoundCfg:
        if self.mode == "best_of_n" and self.samples_per_prompt < 2:
            raise ValueError("mode best_of_n needs samples_per_prompt >= 2")
        _check_server(self.backend, self.server)
        return self


def _check_server(backend: str, server: ServerCfg | None) -> None:
    if backend == "openai" and server is None:
        raise ValueError("backend openai needs `server:` (base_url of the completions endpoint serving the model)")


class GroundingRewardCfg(Section):
    weight: float = 1.0
    cap: PosFloat = 3.0


class WeightOnly(Section):
    weight: float = 1.0


class QualityRewardCfg(Section):
    weight: float = 1.0
    judge: JudgeCfg = RubricJudgeCfg(kind="rubric")
    max_concurrency: PosInt = 8  # an LLM judge scores a batch of completions this many at a time


class RewardsCfg(Section):
    """Reward terms by name (src/bioreasoner/scoring/rewards.py); a term left out is off."""

    grounding: GroundingRewardCfg | None = None
    format: WeightOnly | None = None
    quality: QualityRewardCfg | None = None
    correctness: WeightOnly | None = None

    @model_validator(mode="after")
    def _some_term(self) -> RewardsCfg:
        if not any(v is not None for v in self.__dict__.values()):
            raise ValueError("at least one reward term is needed")
        return self


class GRPOCfg(_Trainer):
    OWN_KEYS: ClassVar[frozenset[str]] = frozenset({"lora", "prompts", "task_types", "stratify", "rewards"})
    prompts: NonNegInt = 0  # train tasks drawn (seeded); 0 = all
    # the task types prompts are drawn from; null = every type [D19]
    task_types: Annotated[list[TaskType], Field(min_length=1)] | None = None
    # gold: types in proportion, qa split evenly across gold decisions (training.rounds.select_prompts) [D19]
    stratify: Literal["none", "gold"] = "none"
    beta: NonNegFloat = 0.04  # KL to the parent; 0 drops the reference pass
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    num_generations: Annotated[int, Field(ge=2)] = 4  # a group of one has no baseline
    max_completion_length: PosInt = 256
    # TRL's field: completions cut at max_completion_length get no loss (DAPO); off by default,
    # and it did not stop the qa runs' drift to "yes" [D19]
    mask_truncated_completions: StrictBool = False
    temperature: PosFloat = 1.0  # > 0: a group of identical greedy samples has no advantage
    top_p: TopP = 1.0
    generation_kwargs: dict[str, Any] = {}
    use_vllm: StrictBool = False
    # TRL's vLLM modes: `colocate` runs vLLM inside the training process; `server` talks to
    # `trl vllm-serve --model <policy>` (its own GPU) at vllm_server_base_url or host:port.
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_base_url: str | None = Field(None, pattern=r"^https?://[^/@\s]+(/\S*)?$")  # overrides host/port
    vllm_server_host: str = Field("0.0.0.0", min_length=1)  # TRL's default; the address the trainer connects to
    vllm_server_port: Annotated[int, Field(gt=0, lt=65536)] = 8000
    vllm_server_timeout: PosFloat = 240.0  # seconds to wait for the server at start
    vllm_gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.3  # colocate: vLLM's share of the GPU
    rewards: RewardsCfg

    @model_validator(mode="after")
    def _groups_fill_batch(self) -> GRPOCfg:
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size x gradient_accumulation_steps ({batch}) must be a multiple "
                f"of num_generations ({self.num_generations})"
            )
        if self.vllm_mode == "server" and not self.use_vllm:
            raise ValueError("vllm_mode server needs use_vllm: true")
        return self


class SchedulerCfg(Section):
    min_sleep_steps: NonNegInt = 8
    max_sleep_steps: NonNegInt = 32
    saturation_ref: PosFloat = 1.0
    novelty_ref: PosFloat = 0.05
    forgetting_ref: PosFloat = 0.05

    @model_validator(mode="after")
    def _order(self) -> SchedulerCfg:
        if self.max_sleep_steps < self.min_sleep_steps:
            raise ValueError("max_sleep_steps must be >= min_sleep_steps")
        return self


class CLSCfg(Section):
    enabled: StrictBool = True
    seed: NonNegInt | None = None  # null: the global `seed`; set it to repeat sleep over seeds (ablations)
    replay_sft: NonNegInt = 48
    replay_chosen_per_round: NonNegInt = 16
    pseudo_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.25
    temperature: PosFloat = 2.0
    learning_rate: PosFloat = 1e-3
    batch_size: PosInt = 8
    max_length: PosInt = 1536
    ewc_lambda: NonNegFloat = 100.0
    fisher_samples: PosInt = 16
    eval_per_type: PosInt = 16
    generation: GenerationCfg = GenerationCfg()
    scheduler: SchedulerCfg = SchedulerCfg()
    lora: LoraCfg


# --------------------------------------------------------------------------- launching

Strategy = Literal["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]
LAUNCHED_STAGES = ("sft", "dpo", "grpo")  # the training stages `python -m bioreasoner.training.launch` starts


class LaunchCfg(Section):
    """How `python -m bioreasoner.training.launch <stage>` starts one training stage [D16].

    processes 1 + ddp: plain `python` (the default); ddp with more: `torchrun`; deepspeed_* and
    fsdp: `accelerate launch` with the shipped configs/accelerate/<strategy>.yaml (CUDA only)."""

    processes: PosInt = 1
    strategy: Strategy = "ddp"
    # true: the section's per_device_train_batch_size sizes the one-process run and N processes
    # take 1/N of it each, so the global batch and the optimizer step count stay the same
    # false: every process takes per_device_train_batch_size (the global batch grows N x)
    keep_global_batch: StrictBool = True


class LaunchSection(Section):
    """One launch entry per launched training stage (`launch.<stage>` in each stage's params)."""

    sft: LaunchCfg = LaunchCfg()
    dpo: LaunchCfg = LaunchCfg()  # every round's dpo@R
    grpo: LaunchCfg = LaunchCfg()


# --------------------------------------------------------------------------- merge and eval


class VersionCfg(Section):
    parent: str  # a root model (ROOTS) or models/merged/<version>
    adapter: str


class MergeCfg(Section):
    max_shard_size: str = Field("5GB", pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB)$")
    check_prompt: str = Field(min_length=1)
    check_max_new_tokens: PosInt = 32
    versions: dict[Name, VersionCfg] = Field(min_length=1)


class EvalCfg(Section):
    models: dict[Name, str] = Field(min_length=1)  # version -> model folder
    generation: GenerationCfg
    max_tasks_per_type: NonNegInt = 0  # 0 = every test task
    backend: Backend = "hf"
    server: ServerCfg | None = None  # backend openai: serves the version being evaluated

    @model_validator(mode="after")
    def _server(self) -> EvalCfg:
        _check_server(self.backend, self.server)
        return self


class ReportCfg(Section):
    """The `report` stage's statistics (src/bioreasoner/reporting): intervals and paired tests."""

    # Percentile-bootstrap resamples; at 1000 the 2.5% / 97.5% ends rest on 25 resamples each,
    # and a bootstrap p-value has a resolution of 2 / n_boot. Fewer than 100 gives jumpy ends.
    n_boot: Annotated[int, Field(ge=100)] = 1000
    # Two-sided level: 0.05 gives 95% intervals, and a delta is significant when p < alpha and
    # its interval excludes 0. Above 0.5 the "interval" would be narrower than half the mass.
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05


# --------------------------------------------------------------------------- the whole file

MERGED = "models/merged/"
ROOTS = ("models/base", "models/pretrained")  # what the base and pretrain stages write


class Params(Section):
    seed: NonNegInt
    model: ModelCfg
    harvest: HarvestCfg
    split: SplitCfg
    base: BaseStageCfg
    build_triplets: BuildTripletsCfg
    pretrain: PretrainCfg
    sft: SFTCfg
    merge: MergeCfg
    eval: EvalCfg
    judges: JudgesCfg
    teacher: TeacherCfg = ExtractiveTeacherCfg(kind="extractive")  # optional: older params files still validate
    dpo: DPOCfg
    rounds: dict[Name, RoundCfg] = Field(min_length=1)
    grpo: GRPOCfg
    cls: CLSCfg
    report: ReportCfg = ReportCfg()  # optional: a params file from before the stage still validates
    launch: LaunchSection = LaunchSection()  # optional: absent = every training stage in one process

    @model_validator(mode="after")
    def _lineage_is_consistent(self) -> Params:
        versions = self.merge.versions
        for v, cfg in versions.items():
            if cfg.parent not in ROOTS and not (
                cfg.parent.startswith(MERGED) and cfg.parent[len(MERGED) :] in versions
            ):
                raise ValueError(
                    f"merge.versions.{v}.parent {cfg.parent!r} is neither a root model {ROOTS} nor a merged version"
                )
        for r, cfg in self.rounds.items():
            if cfg.policy not in versions:
                raise ValueError(f"rounds.{r}.policy {cfg.policy!r} is not a version in merge.versions")
        if "v3_0" not in versions:
            raise ValueError("merge.versions.v3_0 is required: its parent is the policy grpo trains over")
        for v, path in self.eval.models.items():
            if path not in ROOTS and path != MERGED + v and not path.startswith(MERGED):
                continue  # a user's own folder
            if path.startswith(MERGED) and path[len(MERGED) :] not in versions:
                raise ValueError(f"eval.models.{v} {path!r} is not a merged version in merge.versions")
        return self

    @model_validator(mode="after")
    def _batches_split_evenly(self) -> Params:
        sections = {"sft": [self.sft], "dpo": [self.dpo], "grpo": [self.grpo]}
        for stage, cfgs in sections.items():
            launch: LaunchCfg = getattr(self.launch, stage)
            if launch.processes == 1 or not launch.keep_global_batch:
                continue
            for cfg in cfgs:
                if cfg.per_device_train_batch_size % launch.processes:
                    raise ValueError(
                        f"launch.{stage}.processes ({launch.processes}) must divide "
                        f"{stage}.per_device_train_batch_size ({cfg.per_device_train_batch_size}) to keep the "
                        "global batch (or set keep_global_batch: false)"
                    )
        return self

    def round_dpo(self, name: str) -> DPOCfg:
        """The shared `dpo:` section with round `name`'s overrides applied (validated in `load`)."""
        return DPOCfg.model_validate(deep_merge(self.dpo.model_dump(), self.rounds[name].dpo))

    @property
    def grpo_policy(self) -> str:
        """The folder grpo trains over: v3.0's parent, stated once in merge.versions.v3_0."""
        return self.merge.versions["v3_0"].parent


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in (override or {}).items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
        )
    return out


# --------------------------------------------------------------------------- loading


class StageParams:
    """The validated params, showing only the sections a stage declares in dvc.yaml.

    Reading an undeclared section is a bug (DVC would not re-run the stage when it changes),
    so it raises instead of quietly returning a value.
    """

    _DERIVED: ClassVar[dict[str, tuple[str, ...]]] = {"round_dpo": ("dpo", "rounds"), "grpo_policy": ("merge",)}

    def __init__(self, params: Params, sections: Iterable[str]):
        self._params = params
        self._sections = tuple(sections)
        unknown = set(self._sections) - set(Params.model_fields)
        if unknown:
            raise ValueError(f"no params section(s) {sorted(unknown)}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        needs = self._DERIVED.get(name, (name,))
        missing = [s for s in needs if s not in self._sections]
        if missing:
            raise AttributeError(
                f"params section {missing[0]!r} is not declared by this stage (declares {self._sections})"
            )
        return getattr(self._params, name)

    def used(self) -> dict[str, Any]:
        """The declared sections as plain data: for lineage records and checkpoint fingerprints."""
        return {s: _plain(getattr(self._params, s)) for s in self._sections}


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _where(loc: Sequence[int | str], models: Sequence[str] = ()) -> str:
    # drop the discriminator tags pydantic inserts into locations ("sources.0.pubmedqa.path")
    parts = [str(p) for p in loc if str(p) not in models]
    return ".".join(parts)


_TAGGED: dict[str, type[BaseModel]] = {  # discriminator tags pydantic puts into error locations
    "pubmedqa": PubMedQASource,
    "pubmed_xml": PubMedXMLSource,
    "openalex_json": OpenAlexJSONSource,
    "pubmed_api": PubMedAPISource,
    "openalex_api": OpenAlexAPISource,
    "rubric": RubricJudgeCfg,
    "openai": OpenAIJudgeCfg,
    "extractive": ExtractiveTeacherCfg,
}


def _known_keys(root: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The valid keys at `loc` (for a 'did you mean'), found by walking the model tree; list
    indexes and dict keys (version and round names) are stepped over."""
    model: Any = root
    annotation: Any = None
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", {})
        if str(part) in fields:
            annotation = fields[str(part)].annotation
            model = _inner_model(annotation)
        elif str(part) in _TAGGED:
            # the tag picks a member of the field's union (`openai` is a judge under judges.panel,
            # a teacher under teacher:); _TAGGED is the fallback
            model = _inner_model(annotation, tag=str(part)) or _TAGGED[str(part)]
    return list(getattr(model, "model_fields", {}) or [])


def _inner_model(annotation: Any, tag: str | None = None) -> Any:
    """The pydantic model inside Optional[...], list[...], dict[str, ...], Annotated[...]
    (with `tag`: the union member whose `kind` is that tag)."""
    import typing

    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            kind = a.model_fields.get("kind")
            if tag is None or (kind is not None and tag in typing.get_args(kind.annotation)):
                return a
            continue
        stack.extend(typing.get_args(a))
    return None


def _problem(err: ValidationError, path: str | Path, root: type[BaseModel] = None) -> BadInputError:  # type: ignore[assignment]
    # A renamed key is both unknown and missing: the unknown one is the cause, report it first.
    errors = sorted(err.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    e = errors[0]
    loc = tuple(e["loc"])
    where = _where(loc, tuple(_TAGGED)) or "params"
    if e["type"] == "extra_forbidden":
        key = str(loc[-1])
        near = difflib.get_close_matches(key, _known_keys(root or Params, loc), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        return BadInputError(path, where, f"unknown key{hint}")
    if e["type"] == "missing":
        return BadInputError(path, where, "required key is missing")
    msg = re.sub(r"^Value error, ", "", e["msg"])
    if e["type"] == "value_error" or not loc:
        return BadInputError(path, where, msg)
    return BadInputError(path, where, f"{msg}, got {e['input']!r}")


def validate(data: Any, path: str | Path = "params.yaml") -> Params:
    """The whole params mapping, validated; the first problem is a `BadInputError`."""
    if not isinstance(data, Mapping):
        raise BadInputError(path, None, "must be a YAML mapping of sections")
    try:
        params = Params.model_validate(data)
    except ValidationError as err:
        raise _problem(err, path) from None
    for name, rnd in params.rounds.items():
        try:
            params.round_dpo(name)
        except ValidationError as err:
            bad = _problem(err, path, DPOCfg)
            raise BadInputError(path, f"rounds.{name}.dpo.{bad.where}", bad.problem) from None
        del rnd
        launch = params.launch.dpo
        batch = params.round_dpo(name).per_device_train_batch_size
        if launch.processes > 1 and launch.keep_global_batch and batch % launch.processes:
            raise BadInputError(
                path,
                f"rounds.{name}.dpo.per_device_train_batch_size",
                f"{batch} is not divisible by launch.dpo.processes ({launch.processes}): the global batch "
                "cannot be kept",
            )
    return params


def load(path: str | Path = "params.yaml", *, sections: Iterable[str]) -> StageParams:
    """Read, validate the whole file, and expose the declared `sections` only."""
    return StageParams(validate(load_yaml(path), path), sections)
