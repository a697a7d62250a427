"""IncrementalDetokenizer, decode_token and stop strings on a byte-level BPE trained in the session."""


import pytest

from pagoda.engine.detokenizer import IncrementalDetokenizer, decode_token
from pagoda.engine.stop_checker import check_stop_strings
from pagoda.tokenizer import get_tokenizer

TEXTS = [
    "def f(x):\n    return x + 1\n",
    "héllo wörld, café crème brûlée",
    "emoji 😀👍🏽 and 🇫🇷 flags",
    "中文字符 and 日本語のテキスト, 한국어",
    "mixed: naïve Ωμέγα — “quotes” … ∑x²",
]
BACKENDS = [True, False]  # DecodeStream, prefix/read offsets


@pytest.fixture(scope="module")
def tok(test_tokenizer_dir):
    return get_tokenizer(test_tokenizer_dir)


def _special_id(tok) -> int:
    ids = [i for i, t in tok.added_tokens_decoder.items() if t.special]
    if not ids:
        pytest.skip("the test tokenizer has no special tokens")
    return ids[0]


def _stream(tok, prompt_ids, output_ids, **kwargs):
    detok = IncrementalDetokenizer(tok, prompt_ids, **kwargs)
    deltas = [detok.add_tokens([i]) for i in output_ids]
    return detok, deltas


@pytest.mark.parametrize("use_stream", BACKENDS)
@pytest.mark.parametrize("text", TEXTS)
def test_deltas_join_to_full_decode(tok, text, use_stream):
    prompt = tok.encode("x = 1\n", add_special_tokens=False)
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text) // 4  # the vocabulary is small: characters really are split
    detok, deltas = _stream(tok, prompt, ids, use_decode_stream=use_stream)
    assert "".join(deltas) == detok.output_text == tok.decode(ids) == text
    assert detok.token_ids == ids
    assert all("\ufffd" not in d for d in deltas)


@pytest.mark.parametrize("use_stream", BACKENDS)
def test_multibyte_character_held_until_complete(tok, use_stream):
    ids = tok.encode(" 😀", add_special_tokens=False)
    # byte-level BPE over code: the 4 bytes of the emoji come as several tokens
    assert len(ids) >= 3
    detok, deltas = _stream(tok, tok.encode("a", add_special_tokens=False), ids, use_decode_stream=use_stream)
    assert all(d in ("", " ") for d in deltas[:-1])  # nothing of the emoji until its last byte
    assert "".join(deltas) == " 😀" and deltas[-1].endswith("😀")


@pytest.mark.parametrize("use_stream", BACKENDS)
@pytest.mark.parametrize("skip", [True, False])
def test_skip_special_tokens(tok, skip, use_stream):
    special = _special_id(tok)
    a = tok.encode("héllo", add_special_tokens=False)
    b = tok.encode(" 世界", add_special_tokens=False)
    ids = a + [special] + b + [special]
    detok, deltas = _stream(tok, [special] + a, ids, skip_special_tokens=skip, use_decode_stream=use_stream)
    expected = tok.decode(ids, skip_special_tokens=skip)
    assert detok.output_text == expected
    assert (tok.convert_ids_to_tokens(special) in expected) is not skip


@pytest.mark.parametrize("use_stream", BACKENDS)
def test_prompt_ending_mid_character_and_batched_add(tok, use_stream):
    ids = tok.encode("ab 😀 cd 世界 done", add_special_tokens=False)
    full = tok.decode(ids)
    for cut in range(1, len(ids)):
        detok = IncrementalDetokenizer(tok, ids[:cut], use_decode_stream=use_stream)
        text = detok.add_tokens(ids[cut:cut + 2]) + detok.add_tokens(ids[cut + 2:])
        assert "\ufffd" not in text
        # a character split by the prompt's end belongs to the output, whole
        prompt_text = tok.decode(ids[:cut]).rstrip("\ufffd")
        assert prompt_text + text == full, cut


def test_out_of_vocab_ids_give_no_text(tok):
    for use_stream in BACKENDS:
        detok = IncrementalDetokenizer(tok, [], use_decode_stream=use_stream)
        ids = tok.encode("ok", add_special_tokens=False)
        assert detok.add_tokens([len(tok) + 5] + ids) == "ok"


def test_decode_token(tok):
    ids = tok.encode("def 😀", add_special_tokens=False)
    assert decode_token(tok, ids[0]) == "def"
    assert decode_token(tok, ids[-1]) == "\ufffd"  # a lone byte of the emoji
    assert decode_token(tok, len(tok) + 10) == ""
    special = _special_id(tok)
    assert decode_token(tok, special) == tok.convert_ids_to_tokens(special)


def test_stop_string_across_token_boundaries(tok):
    text = "alpha beta STOP gamma"
    ids = tok.encode(text, add_special_tokens=False)
    for include in (False, True):
        detok = IncrementalDetokenizer(tok, [])
        result = None
        for i in ids:
            delta = detok.add_tokens([i])
            result = check_stop_strings(detok.output_text, len(delta), ["STOP"], include)
            if result:
                break
        assert result is not None
        stop, keep = result
        assert stop == "STOP"
        assert detok.output_text[:keep] == ("alpha beta STOP" if include else "alpha beta ")


def test_check_stop_strings_semantics():
    assert check_stop_strings("hello wor", 3, ["world"], False) is None
    assert check_stop_strings("hello world", 2, ["world"], False) == ("world", 6)
    assert check_stop_strings("hello world!", 1, ["world"], True) is None  # match is all old text
    assert check_stop_strings("hello world!", 2, ["world"], True) == ("world", 11)
    assert check_stop_strings("abc", 0, ["c"], False) is None
    assert check_stop_strings("abc", 1, [], False) is None
    # earliest match wins whatever the list order; truncation leaves no stop string behind
    assert check_stop_strings("xx ab", 2, ["b", "a"], False) == ("a", 3)
    assert check_stop_strings("xx ab", 2, ["b", "a"], True) == ("a", 4)
    # new_char_count larger than the text
    assert check_stop_strings("ab", 10, ["a"], False) == ("a", 0)


@pytest.mark.parametrize("use_stream", BACKENDS)
def test_adjacent_special_tokens_without_spaces(tok, use_stream):
    special = _special_id(tok)
    name = tok.convert_ids_to_tokens(special)
    ids = tok.encode("x", add_special_tokens=False) + [special, special]
    detok, _ = _stream(tok, [], ids, skip_special_tokens=False, spaces_between_special_tokens=False,
                       use_decode_stream=use_stream)
    assert detok.output_text == "x" + name + name


def _metaspace_tokenizer():
    """A Llama-like tokenizer: metaspace, byte fallback, and a decoder that strips the leading space."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in "▁abcdefghijklmnopqrstuvwxyzHWé,!":
        vocab.setdefault(c, len(vocab))
    merges = [("▁", "w"), ("o", "r"), ("▁w", "or"), ("l", "d"), ("▁", "H"), ("▁H", "e")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("use_stream", BACKENDS)
def test_context_dependent_decoder_keeps_leading_space(use_stream):
    tok = _metaspace_tokenizer()
    ids = tok.encode("Hello world 😀 é", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids[4]) == "▁wor"
    assert tok.decode(ids[4:]).startswith("wor")  # decoding the suffix alone drops its space
    for cut in range(1, len(ids)):
        detok, deltas = _stream(tok, ids[:cut], ids[cut:], use_decode_stream=use_stream)
        assert all("\ufffd" not in d for d in deltas)
        assert tok.decode(ids[:cut]).rstrip("\ufffd") + detok.output_text == "Hello world 😀 é"
