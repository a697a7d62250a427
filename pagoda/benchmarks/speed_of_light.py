"""Speed-of-light: the least time a GPU with given ceilings could take for a workload.

The model (docs/speed_of_light.md explains it) is a handful of pure functions:

- `ModelShape` describes a decoder-only transformer; `params` and the byte counts follow from it.
- `step_cost(...)` prices one forward pass: max(bytes / bandwidth, FLOPs / matmul rate), where
  bytes = matmul weights read once + KV read (cached context of the step's requests) + KV written
  (its new tokens), and FLOPs = 2·(matmul params)·tokens + 2·vocab·hidden·(sampled tokens)
  + attention 4·layers·heads·head_dim·Σ(query·context) with causal halving inside a chunk.
- `simulate(...)` runs the ideal schedule of a workload — as many requests in flight as the KV
  memory allows, a token budget per step, all decodes batched — and `speed_of_light(...)` tries a
  ladder of budgets and keeps the fastest. It is the workload's bound, not our engine's schedule.
- A shared prefix (`shared_prefix` tokens that begin every prompt, e.g. a system prompt) is computed
  once, held once in the KV cache, and — in the ideal chosen here, cascade attention — its KV is read
  once per step however many requests attend to it (`read_prefix_once=False` prices paged attention
  without cascade: held once, read by every request). See `simulate`.

Invariants: nothing here touches a device or the clock; all sizes are in bytes, rates per second.
The input embedding table is a gather (a few rows per token), so it is not counted as read per step;
the LM head is (it is the embedding table itself when the two are tied).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "fp8": 1, "float8": 1, "int8": 1}


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-like decoder that decide its cost."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False
    dtype_bytes: int = 2
    kv_dtype_bytes: int | None = None  # defaults to dtype_bytes
    gated_mlp: bool = True  # SwiGLU (gate, up, down) vs. plain two-matrix MLP

    @property
    def kv_bytes(self) -> int:
        return self.kv_dtype_bytes or self.dtype_bytes

    def layer_params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        return attn + mlp + 2 * self.hidden  # + two RMSNorm weights

    def params(self) -> int:
        """All parameters, embeddings included (the LM head once when tied)."""
        embed = self.vocab * self.hidden
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.layers * self.layer_params() + self.hidden + embed + head

    def body_params(self) -> int:
        """Parameters multiplied by every token: the layers (not the embedding gather, not the head)."""
        return self.layers * self.layer_params() + self.hidden

    def head_params(self) -> int:
        return self.vocab * self.hidden

    def weight_bytes(self) -> int:
        """Memory the weights occupy."""
        return self.params() * self.dtype_bytes

    def weight_read_bytes(self) -> int:
        """Bytes of weights one forward pass must read: layers + LM head."""
        return (self.body_params() + self.head_params()) * self.dtype_bytes

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes

    @classmethod
    def from_hf_config(cls, config: Any, dtype: str | None = None, kv_cache_dtype: str | None = None) -> "ModelShape":
        """Read a transformers config (or a dict of config.json). `dtype` overrides the checkpoint's."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        if get("text_config") is not None:  # multimodal wrapper: the text model decides the cost
            return cls.from_hf_config(get("text_config"), dtype, kv_cache_dtype)
        hidden = int(get("hidden_size") or get("n_embd") or get("d_model"))
        heads = int(get("num_attention_heads") or get("n_head"))
        kv_heads = int(get("num_key_value_heads") or heads)
        head_dim = int(get("head_dim") or hidden // heads)
        name = dtype if dtype and dtype != "auto" else str(get("dtype") or get("torch_dtype") or "bfloat16")
        name = name.replace("torch.", "")
        kv_name = kv_cache_dtype if kv_cache_dtype and kv_cache_dtype != "auto" else None
        return cls(
            hidden=hidden,
            layers=int(get("num_hidden_layers") or get("n_layer")),
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate=int(get("intermediate_size") or 4 * hidden),
            vocab=int(get("vocab_size")),
            tied_embeddings=bool(get("tie_word_embeddings", False)),
            dtype_bytes=DTYPE_BYTES.get(name, 2),
            kv_dtype_bytes=DTYPE_BYTES.get(kv_name, None) if kv_name else None,
        )


@dataclass(frozen=True)
class Ceilings:
    """What the hardware can do at best: copy bandwidth (bytes/s), matmul rate (FLOP/s), memory."""

    bandwidth: float
    flops: float
    memory_bytes: float | None = None
    source: str = "given"


def parallel_ceilings(one_gpu: Ceilings, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                      stages_overlap: bool = True) -> Ceilings:
    """The ceilings of tensor_parallel x pipeline_parallel GPUs, each with `one_gpu`'s, under ideal scaling (no
    communication, no pipeline bubble): memory adds up over every GPU; bandwidth and matmul rate add up over the
    GPUs that work at once, which is all of them, unless `stages_overlap` is False (one batch at a time, as a
    batch-1 latency run: its pipeline stages run one after another, so only the tensor-parallel ranks add up)."""
    if tensor_parallel < 1 or pipeline_parallel < 1:
        raise ValueError(f"parallel sizes must be >= 1, got tensor {tensor_parallel}, pipeline {pipeline_parallel}")
    working = tensor_parallel * (pipeline_parallel if stages_overlap else 1)
    gpus = tensor_parallel * pipeline_parallel
    memory = None if one_gpu.memory_bytes is None else one_gpu.memory_bytes * gpus
    return Ceilings(bandwidth=one_gpu.bandwidth * working, flops=one_gpu.flops * working, memory_bytes=memory,
                    source=one_gpu.source)


@dataclass(frozen=True)
class Chunk:
    """Part of one request in one step: `query` new tokens after `context` cached ones."""

    query: int
    context: int
    sampled: int = 1  # logits computed for this chunk (0 for a prefill chunk that does not finish the prompt)


def attention_flops(shape: ModelShape, query: int, context: int) -> float:
    """QKᵀ and PV for `query` new tokens attending causally to `context` cached tokens plus each other."""
    pairs = query * context + query * (query + 1) / 2
    return 4.0 * shape.layers * shape.heads * shape.head_dim * pairs


def step_bytes_flops(shape: ModelShape, chunks: Iterable[Chunk]) -> tuple[float, float]:
    """Bytes moved and FLOPs of one forward pass over `chunks`."""
    tokens = context = sampled = 0
    attn = 0.0
    for c in chunks:
        tokens += c.query
        context += c.context
        sampled += c.sampled
        attn += attention_flops(shape, c.query, c.context)
    return _cost_terms(shape, tokens, context, sampled, attn)


def _cost_terms(shape: ModelShape, tokens: int, context: int, sampled: int, attn: float) -> tuple[float, float]:
    kv = shape.kv_bytes_per_token()
    nbytes = shape.weight_read_bytes() + kv * (context + tokens) if tokens else 0.0
    flops = 2.0 * shape.body_params() * tokens + 2.0 * shape.head_params() * sampled + attn
    return float(nbytes), flops


def step_time(nbytes: float, flops: float, ceilings: Ceilings) -> float:
    return max(nbytes / ceilings.bandwidth, flops / ceilings.flops)


def step_cost(shape: ModelShape, chunks: Iterable[Chunk], ceilings: Ceilings) -> float:
    """Least time of one forward pass."""
    return step_time(*step_bytes_flops(shape, chunks), ceilings)


def kv_capacity_tokens(shape: ModelShape, memory_bytes: float, utilization: float = 0.9) -> int:
    """Tokens of KV cache that fit beside the weights in `utilization` of the memory."""
    free = memory_bytes * utilization - shape.weight_bytes()
    if free <= 0:
        raise ValueError(f"the weights ({shape.weight_bytes() / 1e9:.1f} GB) do not fit in {utilization:.0%} of {memory_bytes / 1e9:.1f} GB")
    return int(free // shape.kv_bytes_per_token())


@dataclass(frozen=True)
class Workload:
    """One request: prompt tokens to prefill (`cached` of them already in the KV cache) and outputs."""

    prompt_len: int
    output_len: int
    cached: int = 0


@dataclass
class Schedule:
    """Result of a simulated schedule."""

    time_s: float
    steps: int
    token_budget: int
    bandwidth_bound_s: float = 0.0  # time of steps whose bytes term dominates
    step_times: list[float] = field(default_factory=list, repr=False)


def simulate(shape: ModelShape, work: list[Workload], ceilings: Ceilings, kv_tokens: int, token_budget: int,
             shared_prefix: int = 0, read_prefix_once: bool = True) -> Schedule:
    """The ideal schedule with `token_budget` tokens per step; returns its least total time.

    Each step first gives every decoding request one token, then fills the rest of the budget with
    prompt tokens (continuing partial prefills first, then admitting waiting requests in order while
    their whole final length fits in the KV capacity). The step that finishes a prompt samples the
    first output token, so a request runs prompt_len + output_len − 1 tokens through the model.

    `shared_prefix` = S > 0: every prompt begins with the same S tokens (a system prompt). The
    requests say what is computed (`workload_from_lengths(..., shared_prefix=S)` gives every request
    after the first `cached` = S). The prefix's KV is held once: S tokens of the capacity are set
    aside and each request reserves only its final length − S. What a step reads of it depends on
    the attention kernel, and the ideal chosen by default is cascade attention (`read_prefix_once`):
    the prefix's KV is read once per step, as far as the chunk that reads most of it needs, and every
    request reads only its own tokens after it. That is the least traffic any kernel can have — the
    bound must not depend on a kernel Pagoda happens to lack — and the attention FLOPs are unchanged
    (every query still attends to every prefix token). `read_prefix_once=False` prices paged
    attention without cascade: the blocks are shared in memory but each request reads them.
    As with n > 1, a request may read cached tokens in the step that computes them: the bound is
    off by at most that one step.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    if shared_prefix < 0:
        raise ValueError(f"shared_prefix must be >= 0, got {shared_prefix}")
    for w in work:
        if w.prompt_len + w.output_len > kv_tokens:
            raise ValueError(f"a request of {w.prompt_len + w.output_len} tokens does not fit in {kv_tokens} KV tokens")
        if not 0 <= w.cached < w.prompt_len or w.output_len < 1:
            raise ValueError(f"bad workload {w}: need 0 <= cached < prompt_len and output_len >= 1")
        if w.prompt_len < shared_prefix:
            raise ValueError(f"bad workload {w}: the prompt is shorter than the shared prefix of {shared_prefix} tokens")
    # KV read by a chunk at `c` cached tokens: its tokens after the prefix (the prefix's share is `prefix_read`)
    split = shared_prefix if read_prefix_once else 0
    capacity = kv_tokens - shared_prefix  # for the tokens after the prefix
    attn_unit = 4.0 * shape.layers * shape.heads * shape.head_dim
    waiting = list(reversed(work))  # pop() from the end = arrival order
    prefilling: list[list[int]] = []  # [done, prompt_len, output_len]
    finishing: dict[int, list[int]] = {}  # step index -> final lengths of decoders finishing then
    n_dec = 0
    dec_context_sum = 0  # Σ cached context over decoding requests
    reserved = 0
    total = bw_time = 0.0
    steps = 0
    times: list[float] = []
    while waiting or prefilling or n_dec:
        budget = max(token_budget - n_dec, 0)
        tokens, sampled = n_dec, n_dec
        context = dec_context_sum - n_dec * split  # decoders are past the prefix (prompt_len >= shared_prefix)
        prefix_read = split if n_dec else 0
        attn = attn_unit * (dec_context_sum + n_dec)
        done: list[list[int]] = []
        i = 0
        while budget > 0:
            if i == len(prefilling):
                if not waiting or reserved + waiting[-1].prompt_len + waiting[-1].output_len - shared_prefix > capacity:
                    break
                w = waiting.pop()
                reserved += w.prompt_len + w.output_len - shared_prefix
                prefilling.append([w.cached, w.prompt_len, w.output_len])
            p = prefilling[i]
            q = min(budget, p[1] - p[0])
            budget -= q
            tokens += q
            context += max(p[0] - split, 0)
            prefix_read = max(prefix_read, min(p[0], split))
            attn += attention_flops(shape, q, p[0])
            p[0] += q
            if p[0] == p[1]:
                sampled += 1
                done.append(p)
            i += 1
        if tokens == 0:
            raise RuntimeError("no progress: the KV capacity admits no request")  # unreachable after the checks above
        nbytes, flops = _cost_terms(shape, tokens, context + prefix_read, sampled, attn)
        t = step_time(nbytes, flops, ceilings)
        if nbytes / ceilings.bandwidth >= flops / ceilings.flops:
            bw_time += t
        total += t
        times.append(t)
        steps += 1
        dec_context_sum += n_dec
        for final in finishing.pop(steps, ()):  # decoders whose last token was sampled in this step
            n_dec -= 1
            dec_context_sum -= final - 1
            reserved -= final - shared_prefix
        prefilling = [p for p in prefilling if p[0] < p[1]]
        for _, prompt_len, output_len in done:
            if output_len == 1:
                reserved -= prompt_len + output_len - shared_prefix
                continue
            n_dec += 1
            dec_context_sum += prompt_len
            finishing.setdefault(steps + output_len - 1, []).append(prompt_len + output_len)
    return Schedule(total, steps, token_budget, bw_time, times)


def budget_ladder(work: list[Workload], kv_tokens: int) -> list[int]:
    """Token budgets worth trying: powers of two from 64 up to everything that can be in flight."""
    top = max(sum(w.prompt_len for w in work), 64)
    top = min(top, kv_tokens) if kv_tokens > 64 else top
    ladder, b = [], 64
    while b < top:
        ladder.append(b)
        b *= 2
    ladder.append(top)
    return ladder


def speed_of_light(shape: ModelShape, work: list[Workload], ceilings: Ceilings, kv_tokens: int,
                   budgets: Iterable[int] | None = None, shared_prefix: int = 0, read_prefix_once: bool = True) -> Schedule:
    """The fastest ideal schedule over the budget ladder (`shared_prefix`, `read_prefix_once`: see `simulate`)."""
    best = None
    for budget in budgets or budget_ladder(work, kv_tokens):
        s = simulate(shape, work, ceilings, kv_tokens, budget, shared_prefix, read_prefix_once)
        s.step_times = []
        if best is None or s.time_s < best.time_s:
            best = s
    assert best is not None
    return best


def workload_from_lengths(prompt_lens: Iterable[int], output_lens: Iterable[int], n: int = 1,
                          shared_prefix: int = 0) -> list[Workload]:
    """Requests as the benchmark sends them; with n > 1 the other samples reuse the cached prompt.

    With `shared_prefix` = S every prompt begins with the same S tokens: the first request computes
    them, every later one finds them cached (all but its last prompt token when the prompt is only
    the prefix). Pass the same S to `simulate` / `speed_of_light` so the prefix is held once.
    """
    work = []
    for i, (p, o) in enumerate(zip(prompt_lens, output_lens)):
        p, o = int(p), int(o)
        work.append(Workload(p, o, cached=min(shared_prefix, p - 1) if i else 0))
        work.extend(Workload(p, o, cached=p - 1) for _ in range(n - 1))
    return work


def achieved_percent(sol_s: float, measured_s: float) -> float:
    return 100.0 * sol_s / measured_s if measured_s > 0 else math.nan


def format_line(sol_s: float, measured_s: float) -> str:
    return f"Speed-of-light: {sol_s:.4g} s; achieved {achieved_percent(sol_s, measured_s):.2f} %"
