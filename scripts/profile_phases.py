"""Where an engine step's host time goes: timers around the engine's calls during one offline LLM.generate run.

    M=MODEL_DIR [NP=1000] [IL=128] [OL=128] [SCHEMA=1] [TEMP=1.0] [LK='{"quantization": "fp8"}'] \
        python scripts/profile_phases.py

Runs NP random prompts of IL tokens to OL output tokens (ignore_eos; with SCHEMA=1 each request is constrained by
a small JSON schema) on MODEL_DIR with dummy bf16 weights (LK: more LLM keyword arguments, as JSON), after a warm-up
of 8, then prints out tok/s, ms per engine step, and for each wrapped call its time per step (wall clock on the
calling thread: the grammar thread's calls overlap the engine thread's). Timers only; nothing is synchronized, so a
call that waits for the device shows that wait. Also prints the CUDA caching allocator's retries and device
mallocs/frees during the run (a cudaFree synchronizes the device: a wait hidden inside a launch). Used for issue 18
(docs/benchmarks.md, sessions 12, 17 and 18).
"""
import sys
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
import json, os, time, collections  # noqa: E401
from pagoda import LLM, SamplingParams
from pagoda.engine import core as core_mod, structured_requests as sr
from pagoda.core import scheduler as sch
from pagoda.executor import uniproc
from pagoda.worker import step_output
from pagoda.engine import llm_engine

T = collections.defaultdict(float); N = collections.Counter()
def wrap(cls, name, key=None):
    f = getattr(cls, name); key = key or f"{cls.__name__}.{name}"
    def w(*a, **k):
        t = time.perf_counter()
        try: return f(*a, **k)
        finally: T[key] += time.perf_counter() - t; N[key] += 1
    setattr(cls, name, w)
for cls, name in [(sch.Scheduler, "schedule"), (sch.Scheduler, "update_from_output"),
                  (uniproc.UniProcExecutor, "execute_model"), (uniproc.UniProcExecutor, "sample_tokens"),
                  (step_output.StepOutput, "get"), (core_mod.EngineCore, "step"), (core_mod.EngineCore, "_sample_waiting"),
                  (sr.StructuredRequests, "fill"), (sr.StructuredRequests, "collect"), (llm_engine.LLMEngine, "step")]:
    wrap(cls, name)
from pagoda.worker import model_runner as mr, sampling_inputs as si
from pagoda.sample import sampler as smp
for cls, name in [(mr.ModelRunner, "apply_grammar"), (mr.ModelRunner, "_sample"), (si.SamplingInputs, "build"),
                  (smp.Sampler, "forward"), (sr.StructuredRequests, "accept")]:
    wrap(cls, name)
_td = mr.to_device
def td(*a):
    t = time.perf_counter()
    try: return _td(*a)
    finally: T["model_runner.to_device"] += time.perf_counter() - t; N["model_runner.to_device"] += 1
mr.to_device = td
from pagoda.structured_output.request_grammar import RequestGrammar
f0 = RequestGrammar.accept_batch
def ab(*a):
    t = time.perf_counter()
    try: return f0(*a)
    finally: T["accept_batch"] += time.perf_counter() - t; N["accept_batch"] += 1
RequestGrammar.accept_batch = staticmethod(ab)
from pagoda.structured_output import xgrammar_backend as xb  # the grammar thread's parts inside accept + fill
for owner, name, key in [(xb._XgrammarMatcher, "batch_accept", "xgrammar batch accept"),
                         (xb._XgrammarMatcher, "batch_fill", "xgrammar batch fill"),
                         (RequestGrammar, "finish_batch_rows", "row fix-ups (finish_batch_rows)")]:
    def part(*a, _f=getattr(owner, name), _k=key):
        t = time.perf_counter()
        try: return _f(*a)
        finally: T[_k] += time.perf_counter() - t; N[_k] += 1
    setattr(owner, name, staticmethod(part))
_acc = sr.StructuredRequests.accept
def acc(self, step, sampled_tokens):  # the grammar thread's wait for the step's tokens, apart from its work
    def timed():
        t = time.perf_counter()
        try: return sampled_tokens()
        finally: T["accept: wait for tokens"] += time.perf_counter() - t; N["accept: wait for tokens"] += 1
    return _acc(self, step, timed)
sr.StructuredRequests.accept = acc

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "tags"]}
np_, il, ol = int(os.environ.get("NP", 1000)), int(os.environ.get("IL", 128)), int(os.environ.get("OL", 128))
llm = LLM(model=os.environ["M"], **{"load_format": "dummy", "dtype": "bfloat16", **json.loads(os.environ.get("LK", "{}"))})
from pagoda.worker import input_batch as ib  # the parts of _sample (its host time is mostly not its wrapped calls)
wrap(type(llm.llm_engine.core.executor.worker.runner.model), "compute_logits", "_sample: compute_logits")
wrap(ib.InputBatch, "append_tokens", "_sample: append_tokens")
wrap(step_output.SampledTokens, "__init__", "_sample: SampledTokens (copy to host, event)")
import random
rng = random.Random(0)
vocab = json.load(open(os.path.join(os.environ["M"], "config.json")))["vocab_size"]
low, high = min(1000, vocab // 4), min(30000, vocab)  # plain-text ids of the vocabulary
prompts = [{"prompt_token_ids": [rng.randrange(low, high) for _ in range(il)]} for _ in range(np_)]
kw = {}
if os.environ.get("SCHEMA"):
    from pagoda.sampling_params import StructuredOutputsParams
    kw["structured_outputs"] = StructuredOutputsParams(json=SCHEMA)
sp = SamplingParams(max_tokens=ol, ignore_eos=True, temperature=float(os.environ.get("TEMP", 1.0)), seed=None, **kw)
llm.generate(prompts[:8], sp)  # warm (compile)
T.clear(); N.clear()
import torch
stats0 = torch.cuda.memory_stats() if torch.cuda.is_available() else {}
t = time.perf_counter(); outs = llm.generate(prompts, sp); el = time.perf_counter() - t
ntok = sum(len(o.outputs[0].token_ids) for o in outs)
steps = N["EngineCore.step"]
print(f"RESULT schema={bool(kw)} {ntok/el:.0f} out tok/s, {el:.2f} s, {ntok} tokens, {steps} steps, {1e3*el/steps:.1f} ms/step")
for k in sorted(T, key=lambda k: -T[k]):
    print(f"  {k:40s} {1e3*T[k]/max(1,steps):7.2f} ms/step  ({N[k]} calls)")
if stats0:  # allocator retries free cached blocks (cudaFree synchronizes the device): a host wait inside a launch
    stats1 = torch.cuda.memory_stats()
    print("  CUDA allocator during the run:", {k: stats1.get(k, 0) - stats0.get(k, 0)
          for k in ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_sync_all_streams")})
if kw:
    ok = 0
    for o in outs:
        try: json.loads(o.outputs[0].text); ok += 1
        except Exception: pass
    print("valid JSON outputs:", ok, "of", len(outs))
