"""LLM runs keep the pre-run heap frozen out of GC passes, and hand it back afterwards."""

import gc

from pagoda import LLM, SamplingParams


def test_heap_frozen_only_while_a_run_goes(llama_dir):
    llm = LLM(llama_dir, max_model_len=64)
    seen = []

    def observe(token_ids, logits):
        seen.append(gc.get_freeze_count())
        return logits

    params = SamplingParams(max_tokens=3, ignore_eos=True, logits_processors=[observe])
    assert gc.get_freeze_count() == 0
    llm.generate(["a b c"], params, use_tqdm=False)
    assert seen and all(count > 0 for count in seen)
    assert gc.get_freeze_count() == 0
    # a caller's own freeze is left alone
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        llm.generate(["a b c"], SamplingParams(max_tokens=2), use_tqdm=False)
        assert gc.get_freeze_count() > frozen // 2  # not unfrozen (the count only drops as frozen objects die)
    finally:
        gc.unfreeze()
