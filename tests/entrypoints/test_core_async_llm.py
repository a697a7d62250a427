"""AsyncLLM used directly (vLLM's async API): the engine core in its own process, asyncio in this one."""

import asyncio

from pagoda import EngineArgs, SamplingParams
from pagoda.engine.async_llm import AsyncLLM
from pagoda.sampling_params import RequestOutputKind


def test_generate_matches_offline_and_leaving_aborts(model_dir):
    from pagoda import LLM

    llm = LLM(model_dir, max_model_len=512)
    params = SamplingParams(temperature=0, max_tokens=10, n=2)
    expected = llm.generate(["import os"], params, use_tqdm=False)[0]
    longer = llm.generate(["import os"], SamplingParams(temperature=0, max_tokens=30, n=2, ignore_eos=True),
                          use_tqdm=False)[0]

    async def scenario():
        engine = AsyncLLM.from_engine_args(EngineArgs(model=model_dir, max_model_len=512))
        try:
            outputs = [out async for out in engine.generate("import os", params, request_id="a")]
            long = engine.generate("import sys", SamplingParams(max_tokens=400, ignore_eos=True), request_id="b")
            first = await long.__anext__()
            running = engine.num_unfinished_requests
            await long.aclose()  # the consumer leaves: the request is aborted in the core
            for _ in range(100):
                if engine.num_unfinished_requests == 0:
                    break
                await asyncio.sleep(0.05)
            after = engine.num_unfinished_requests
            # DELTA outputs read by a slow consumer are merged, never lost.
            delta = SamplingParams(temperature=0, max_tokens=30, n=2, ignore_eos=True,
                                   output_kind=RequestOutputKind.DELTA)
            pieces = {0: [], 1: []}
            async for out in engine.generate("import os", delta, request_id="c"):
                for c in out.outputs:
                    pieces[c.index].append((c.text, list(c.token_ids)))
                await asyncio.sleep(0.02)
            return outputs, first, running, after, pieces
        finally:
            engine.shutdown()

    outputs, first, running, after, pieces = asyncio.run(scenario())
    final = outputs[-1]
    assert final.finished and not any(o.finished for o in outputs[:-1])
    assert [c.text for c in final.outputs] == [c.text for c in expected.outputs]
    assert [c.token_ids for c in final.outputs] == [c.token_ids for c in expected.outputs]
    assert not first.finished and running == 1 and after == 0
    for index in (0, 1):
        assert "".join(text for text, _ in pieces[index]) == longer.outputs[index].text
        assert [t for _, ids in pieces[index] for t in ids] == longer.outputs[index].token_ids


def test_while_core_starts_runs_once_the_core_is_spawned(model_dir):
    """The server imports its HTTP stack in this hook: it must run once the core process exists (so the core's
    start, the critical path, is not waiting for it) and before AsyncLLM waits for the core to be ready."""
    import multiprocessing

    seen = []
    engine = AsyncLLM(EngineArgs(model=model_dir, max_model_len=512),
                      while_core_starts=lambda: seen.append([p.is_alive() for p in multiprocessing.active_children()]))
    try:
        assert len(seen) == 1 and True in seen[0]  # called once, with the core process alive
    finally:
        engine.shutdown()


def test_the_servers_start_path_does_not_import_fastapi():
    """`pagoda serve` spawns the engine core before it imports FastAPI (api_server.import_app_modules)."""
    import subprocess
    import sys

    code = ("import sys, pagoda.entrypoints.cli.main, pagoda.entrypoints.openai.api_server as s; "
            "assert not {'fastapi', 'pydantic', 'uvicorn', 'transformers', 'torch'} & set(sys.modules), "
            "sorted({'fastapi', 'pydantic', 'uvicorn', 'transformers', 'torch'} & set(sys.modules)); "
            "s.import_app_modules(); assert 'fastapi' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
