"""deploy's config: the promotion gate, where the app listens, its limits, and whether the
flow leaves it running."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from stages.core.configuration import StrictModel
from stages.core.contract import StageConfig


class GateConfig(StrictModel):
    """The new model replaces ``production`` only if it keeps up with it on the same eval."""

    max_pass_rate_drop: float = Field(0.0, ge=0, description="Held-out checker pass rate may be at most this much "
                                                             "below production's.")
    max_perplexity_increase: float = Field(0.05, ge=0, description="Relative: validation perplexity at most "
                                                                    "this much above production's.")
    figures: list[Literal["pass_rate", "perplexity"]] = Field(
        ["pass_rate", "perplexity"], min_length=1,
        description="What the gate compares; a named figure missing on either side refuses the candidate.")
    lm_eval: dict[str, float] = Field(
        default_factory=dict,
        description="lm-evaluation-harness figures the gate also compares, '<task>.<metric>' -> bound: a score "
                    "(pass) at most that much below production's; a perplexity or bits-per-byte figure at most "
                    "that much above it, relative. {'language.pass': 0.05, 'heldout_ppl.bits_per_byte': 0.02}")


class ServerConfig(StrictModel):
    host: str = Field("127.0.0.1", description="Bind address; loopback unless told otherwise.")
    port: int = Field(8000, ge=0, le=65535, description="0 = a free port.")
    api_key: Optional[str] = Field(None, description="Bearer key the API requires; null = open.")
    max_tokens: int = Field(256, ge=1, description="Largest max_tokens a request may ask for.")
    max_n: int = Field(4, ge=1)
    max_request_bytes: int = Field(64_000, ge=1024)
    max_num_seqs: int = Field(64, ge=1, description="vLLM's running batch: most sequences decoded together "
                                                    "(continuous batching).")
    max_model_len: Optional[int] = Field(None, ge=16, description="Context the engine allots a sequence; null = the "
                                                                  "model's own (max_position_embeddings).")
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = Field(
        None, description="Weights and activations; null = float32 on CPU, bfloat16 on a GPU.")
    startup_timeout_s: float = Field(600, gt=0, description="How long to wait for vLLM's engine to answer /health "
                                                             "(about 30 s for a small model on 2 idle cores).")
    kv_cache_gib: int = Field(1, ge=1, description="KV cache on CPU (vLLM's VLLM_CPU_KVCACHE_SPACE), whole GiB.")


class DeployConfig(StageConfig):
    gate: GateConfig = Field(default_factory=GateConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    smoke_max_tokens: int = Field(16, ge=1, description="Tokens per smoke-test request.")
    latency_probe_requests: int = Field(12, ge=0, description="Chat requests after the smoke test, one at a time, "
                                                              "for the served model's latency percentiles.")
    throughput_burst_requests: int = Field(8, ge=0, description="Chat requests sent at once after the latency probe, "
                                                                "for the served model's throughput (tokens/s).")
    keep_running: bool = Field(False, description="Leave the app serving after the flow: `lmforge run` then stays "
                                                  "in the foreground serving until Ctrl-C (else the app is stopped).")
