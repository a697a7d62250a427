"""Worker: owns one device, the model on it, its KV cache, and the model runner.

Invariants:
- The KV cache is allocated once, after the model, as one tensor per layer of shape
  [2, num_blocks, block_size, num_kv_heads, head_size] (attention/backend.py's layout).
- With a draft model (speculative decoding, method "draft_model"), the draft is loaded after the
  target and has its own cache of the same num_blocks and block_size, indexed by the target's block
  tables: a block's bytes are the target's plus the draft's, so sizing counts both. On CUDA the draft
  gets CUDA graphs of its own at the same buckets (decode and verify query lengths).
- On CPU the cache size comes from kv_cache_memory_bytes (default 4 GiB), capped at what
  max_num_seqs sequences of max_model_len can use; num_gpu_blocks_override wins over both. On CUDA,
  kv_cache_memory_bytes when given sets the size alone (as vLLM: gpu_memory_utilization is then not
  used), else a profiled step and gpu_memory_utilization do (worker/gpu_memory.py).
- With tensor parallelism every rank runs one Worker on the same SchedulerOutputs in the same order; its
  model holds the rank's shards and its cache the rank's KV heads (`kv_spec`), so each rank sizes its own
  cache and the engine takes the minimum (executor/multiproc.py).
- With pipeline parallelism a worker's model holds its stage's layers only, and its cache one entry per layer
  it holds (kv_spec.num_layers); the ranks still size their caches alike (minimum over ranks). On CUDA a
  pipeline stage runs eagerly (no CUDA graphs yet: a graph would need the received activations as inputs).
- On CUDA, kernels are warmed up (worker/warmup.py) after the cache is allocated and before any
  CUDA graph is captured; the warm-up writes nothing into the cache.
- On CUDA, start-up's Triton variants compile on a thread pool first (worker/precompile.py, off with
  PAGODA_COMPILE_THREADS=0): the memory profile's right before it runs (only the model exists then), the
  warm-up's and every CUDA-graph shape's after the cache and runner exist (the graph runners are built
  before the warm-up for this), before the warm-up. Neither pass launches a kernel or writes the cache. The
  passes' compile processes start before the model is built and stop after the second pass.
- Every cache (the draft's too) is in `kv_cache_dtype` = CacheConfig.torch_dtype(model dtype): the
  model's dtype, or FP8 for kv_cache_dtype fp8 / fp8_e4m3 / fp8_e5m2, so that bytes_per_block (and so
  every block count derived from a byte budget) uses its element size: FP8 holds twice the tokens of
  bf16 in the same memory. The attention layers' k_scale / v_scale are set from each model's checkpoint
  (models/utils.load_kv_cache_scales) right after it loads, before any step or graph capture.
"""

from __future__ import annotations

import logging

import torch

from pagoda.attention.backend import get_attention_backend
from pagoda.config import PagodaConfig
from pagoda.core.sched_output import SchedulerOutput
from pagoda.model_executor.model_loader import get_model
from pagoda.model_executor.models.utils import load_kv_cache_scales
from pagoda.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)

CPU_DEFAULT_KV_BYTES = 4 << 30


class Worker:
    def __init__(self, config: PagodaConfig, rank: int = 0) -> None:
        self.config = config
        self.rank = rank  # global rank; the process group (if any) was joined before the model is built
        self.device = torch.device(config.device.device)
        if config.parallel.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())  # set by the executor from the rank
        if config.model.seed is not None:
            torch.manual_seed(config.model.seed)
        self.attn_backend = get_attention_backend(config.device.device)
        if self.device.type == "cuda":
            from pagoda.worker.gpu_memory import check_weights_fit
            from pagoda.worker.precompile import start_compile_processes

            start_compile_processes()  # they import Triton while the model loads (worker/precompile.py)
            check_weights_fit(self)
        self.kv_cache_dtype = config.cache.torch_dtype(config.model.torch_dtype)
        self.model = get_model(config.model, config.load, config.device.device, self.attn_backend)
        self.kv_spec = self.model.kv_cache_spec
        load_kv_cache_scales(self.model, config.model.model_path, config.load.load_format, config.cache.cache_dtype)
        self.draft_model = None
        speculative = config.speculative
        if speculative is not None and speculative.method == "draft_model":
            self.draft_model = get_model(speculative.draft_model_config, config.load, config.device.device,
                                         self.attn_backend)
            load_kv_cache_scales(self.draft_model, speculative.draft_model_config.model_path, config.load.load_format,
                                 config.cache.cache_dtype)
        self.runner: ModelRunner | None = None

    def bytes_per_block(self) -> int:
        """Bytes of one block of every cache this worker keeps (the target's, and the draft model's)."""
        dtype_size = torch.empty((), dtype=self.kv_cache_dtype).element_size()
        size = self.kv_spec.bytes_per_block(self.config.cache.block_size, dtype_size)
        if self.draft_model is not None:
            size += self.draft_model.kv_cache_spec.bytes_per_block(self.config.cache.block_size, dtype_size)
        return size

    def determine_num_blocks(self) -> int:
        cache = self.config.cache
        if cache.num_gpu_blocks_override is not None:
            return cache.num_gpu_blocks_override
        if self.kv_spec.num_layers == 0:  # no KV cache (BERT): blocks are only the scheduler's bookkeeping
            return -(-self.config.model.max_model_len // cache.block_size) * self.config.scheduler.max_num_seqs
        if self.device.type == "cuda" and cache.kv_cache_memory_bytes is None:
            from pagoda.worker.gpu_memory import profile_num_blocks
            from pagoda.worker.precompile import precompile_profile

            precompile_profile(self)  # the profile's kernels compile on a pool first (worker/precompile.py)
            return profile_num_blocks(self)
        budget = cache.kv_cache_memory_bytes or CPU_DEFAULT_KV_BYTES
        num_blocks = budget // self.bytes_per_block()
        if self.device.type == "cuda":
            return int(num_blocks)
        blocks_per_seq = -(-self.config.model.max_model_len // cache.block_size)
        return int(min(num_blocks, blocks_per_seq * self.config.scheduler.max_num_seqs + 1))

    def initialize_cache(self, num_blocks: int) -> None:
        spec, cache = self.kv_spec, self.config.cache
        shape = self.attn_backend.kv_cache_shape(num_blocks, cache.block_size, spec.num_kv_heads, spec.head_size)
        kv_caches = [torch.zeros(shape, dtype=self.kv_cache_dtype, device=self.device) for _ in range(spec.num_layers)]
        draft_kv_caches = None
        if self.draft_model is not None:
            draft_spec = self.draft_model.kv_cache_spec
            draft_shape = self.attn_backend.kv_cache_shape(num_blocks, cache.block_size, draft_spec.num_kv_heads,
                                                           draft_spec.head_size)
            draft_kv_caches = [torch.zeros(draft_shape, dtype=self.kv_cache_dtype, device=self.device)
                               for _ in range(draft_spec.num_layers)]
        logger.info(
            "KV cache: %d blocks of %d tokens = %d tokens in %s (kv_cache_dtype=%s), %.2f GiB on %s",
            num_blocks, cache.block_size, num_blocks * cache.block_size, str(self.kv_cache_dtype).removeprefix("torch."),
            cache.cache_dtype, num_blocks * self.bytes_per_block() / (1 << 30), self.device,
        )
        self.runner = ModelRunner(self.config, self.model, kv_caches, self.device, self.attn_backend)
        if self.draft_model is not None:
            self.runner.spec.attach_draft_model(self.draft_model, draft_kv_caches)
        if self.device.type != "cuda":
            return
        use_graphs = not self.config.enforce_eager and self.config.model.runner_type == "generate"
        if use_graphs and self.config.parallel.pipeline_parallel_size > 1:
            logger.info("pipeline parallelism: steps run eagerly (CUDA graphs of pipeline stages are not supported yet)")
            use_graphs = False
        from pagoda.worker.precompile import precompile_startup
        from pagoda.worker.warmup import warm_up_kernels

        graph_runners = self._make_cuda_graph_runners(kv_caches) if use_graphs else []
        graph_max_size = self.config.max_cudagraph_capture_size if use_graphs else None
        # Every variant the warm-up and the captures need compiles on a pool first (worker/precompile.py).
        from pagoda.worker.compile_watch import watch_runtime_compiles

        from pagoda.worker.precompile import stop_compile_processes

        try:
            if precompile_startup(self.runner, graph_max_size, graph_runners) is not None:
                watch_runtime_compiles(phase="warm-up and CUDA-graph capture")  # what the pass missed, at INFO
        finally:
            stop_compile_processes()
        with torch.inference_mode():  # compile the Triton variants real steps need (graphs only cover decode)
            warm_up_kernels(self.runner, graph_max_size)
        for graphs in graph_runners:  # the target's graphs, then the draft's
            graphs.capture()
        if graph_runners:
            self.runner.cuda_graphs = graph_runners[0]
            if self.draft_model is not None:
                self.runner.spec.draft.cuda_graphs = graph_runners[1]
        watch_runtime_compiles()  # from here on, a Triton compile is a request waiting: logged (compile_watch.py)

    def _make_cuda_graph_runners(self, kv_caches) -> list:
        """The target's CudaGraphRunner and, with a draft model, the draft's (its decode steps and its
        catch-up over verify steps); built before the warm-up so the compile pass can run their shapes."""
        from pagoda.worker.cuda_graph import CudaGraphRunner

        config, speculative = self.config, self.config.speculative
        verify = speculative.num_speculative_tokens + 1 if speculative else None
        runners = [CudaGraphRunner(self.model, kv_caches, config.max_cudagraph_capture_size,
                                   config.model.max_model_len, config.cache.block_size, self.device,
                                   self.runner.attn_metadata, verify_query_len=verify, cascade=self.runner.cascade)]
        if self.draft_model is not None:
            runners.append(CudaGraphRunner(self.draft_model, self.runner.spec.draft.kv_caches,
                                           config.max_cudagraph_capture_size, config.model.max_model_len,
                                           config.cache.block_size, self.device, self.runner.attn_metadata,
                                           verify_query_len=verify))
        return runners

    def execute_model(self, sched: SchedulerOutput):
        if self.runner is None:
            raise RuntimeError("initialize_cache() must run before the first step")
        return self.runner.execute_model(sched)

    def sample_tokens(self, bitmask):
        return self.runner.sample_tokens(bitmask)

    def sample_tokens_if_deferred(self, bitmask):
        """sample_tokens when the last execute_model left its sampling waiting, else None (the engine's pipelined
        loop sends this right after a structured step's launch, before it knows whether every one of its requests
        failed on arrival, which leaves nothing to sample)."""
        if self.runner is None or self.runner.deferred_sampling is None:
            return None
        return self.runner.sample_tokens(bitmask)
