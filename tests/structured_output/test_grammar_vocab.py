"""The pieces under the backends: token bytes for outlines, the bitmask bit layout, and imports that stay
lazy (no grammar library at `import pagoda.structured_output`, and xgrammar working with triton absent)."""

import subprocess
import sys

import numpy as np

from pagoda.structured_output import bitmask_width, ids_to_row, row_to_ids
from pagoda.structured_output.vocab import special_token_ids, token_bytes


def test_byte_level_tokens_give_the_bytes_they_decode_to(tokenizer):
    table = token_bytes(tokenizer)
    assert not set(table) & special_token_ids(tokenizer)
    assert set(table) == set(range(5, len(tokenizer)))
    whole = 0
    for token_id, data in table.items():
        text = tokenizer.decode([token_id])
        if "\ufffd" not in text:
            assert data.decode("utf-8") == text, token_id
            whole += 1
        else:
            assert len(data) >= 1
    assert whole > 1800
    ids = tokenizer.encode("déjà vu — ok", add_special_tokens=False)
    assert b"".join(table[i] for i in ids).decode("utf-8") == "déjà vu — ok"


def test_sentencepiece_style_tokens():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x41>": 3, "<0xC3>": 4, "<0xA9>": 5, "▁": 6, "▁ab": 7, "b": 8,
             "a": 9, "ab": 10}
    model = models.BPE(vocab=vocab, merges=[("a", "b"), ("▁", "ab")], byte_fallback=True, unk_token="<unk>")
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    assert token_bytes(fast) == {3: b"A", 4: b"\xc3", 5: b"\xa9", 6: b" ", 7: b" ab", 8: b"b", 9: b"a", 10: b"ab"}


def test_bit_layout():
    assert bitmask_width(1) == 1 and bitmask_width(32) == 1 and bitmask_width(33) == 2
    row = ids_to_row([0, 31, 32, 69], 3)
    assert row.dtype == np.int32 and row.shape == (3,)
    assert row[0] == np.int32(-(2 ** 31) + 1) and row[1] == 1 and row[2] == 1 << 5  # bit b of word w: 32 w + b
    assert row_to_ids(row).tolist() == [0, 31, 32, 69]


IMPORTS = r"""
import sys
sys.modules["triton"] = None  # every `import triton` now raises ImportError
import pagoda.structured_output as so
heavy = [m for m in ("xgrammar", "llguidance", "outlines_core") if m in sys.modules]
assert not heavy, f"imported at package import: {heavy}"
from pagoda.config import StructuredOutputsConfig
from pagoda.sampling_params import StructuredOutputsParams
from pagoda.tokenizer import get_tokenizer
tokenizer = get_tokenizer(sys.argv[1])
manager = so.StructuredOutputManager(StructuredOutputsConfig(), tokenizer, 2048, [tokenizer.eos_token_id])
grammar = manager.add_request("r", StructuredOutputsParams(json={"type": "object"}, backend="xgrammar",
                                                          disable_any_whitespace=True))
assert grammar.wait(60) and grammar.error is None, grammar.error
allowed = so.row_to_ids(manager.fill_bitmask([grammar])[0]).tolist()
assert allowed and all(tokenizer.decode([i]).startswith("{") for i in allowed), allowed
manager.shutdown()
print("xgrammar works without triton")
"""


def test_imports_are_lazy_and_need_no_triton(test_tokenizer_dir):
    result = subprocess.run([sys.executable, "-c", IMPORTS, test_tokenizer_dir], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "xgrammar works without triton" in result.stdout
