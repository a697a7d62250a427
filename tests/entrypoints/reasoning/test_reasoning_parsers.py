"""The built-in reasoning parsers on outputs in their models' real formats, whole and streamed in many chunkings
(one character at a time, token-like pieces, every cut into two and three pieces, so markers split across
deltas): the stream always joins to the whole-output answer. Also the registry and --reasoning-parser-plugin.

Formats, from the models' documentation: DeepSeek-R1 writes `<think>\\n...\\n</think>\\n\\n` then the answer
(its newer chat template puts `<think>\\n` in the prompt, so the output may start inside the reasoning);
Qwen3 writes `<think>...</think>` when thinking and no tags with enable_thinking=False (its template then puts
`<think>\\n\\n</think>\\n\\n` in the prompt); Qwen3-Thinking-2507 templates end the prompt with `<think>\\n`;
Granite 3.2 with thinking=True writes "Here is my thought process:" ... "Here is my response:" (vLLM also
accepts "Here's").
"""

import random
import re

import pytest

from pagoda.entrypoints.openai.reasoning import (
    MarkerReasoningParser,
    ReasoningParser,
    ReasoningParserManager,
    import_reasoning_parser,
)

QWEN3_NO_THINK_PROMPT = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_THINKING_PROMPT = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"

# (parser, prompt, output, expected reasoning, expected content)
CASES = [
    # DeepSeek-R1
    ("deepseek_r1", "", "<think>\nThe user asks 9.11 vs 9.8. 9.8 = 9.80 > 9.11.\n</think>\n\n9.8 is greater.",
     "\nThe user asks 9.11 vs 9.8. 9.8 = 9.80 > 9.11.\n", "\n\n9.8 is greater."),
    ("deepseek_r1", "", "Okay, 2 + 2 = 4.\n</think>\n\nThe answer is **4**.", "Okay, 2 + 2 = 4.\n",
     "\n\nThe answer is **4**."),
    ("deepseek_r1", "", "<think>\nStill thinking about it", "\nStill thinking about it", None),
    ("deepseek_r1", "", "Still thinking, no tags at all", "Still thinking, no tags at all", None),
    ("deepseek_r1", "", "<think></think>4", "", "4"),
    ("deepseek_r1", "", "<think>\n\n</think>\n\nHello!", "\n\n", "\n\nHello!"),
    ("deepseek_r1", "", "</think>Only an answer", "", "Only an answer"),
    ("deepseek_r1", "", "<think>done</think>", "done", None),
    ("deepseek_r1", "", "", "", None),
    ("deepseek_r1", "", "\n\n<think>x</think>y", "x", "y"),
    ("deepseek_r1", "", "I write <think> here</think>ok", "I write <think> here", "ok"),
    ("deepseek_r1", "", "a </thin b </ c</think>d </think> e", "a </thin b </ c", "d </think> e"),
    ("deepseek_r1", "", "cut off at </thi", "cut off at </thi", None),
    ("deepseek_r1", "", "<thin", "<thin", None),
    ("deepseek_r1", "", "<think>résumé 思考 🙂</think>答案", "résumé 思考 🙂", "答案"),
    # Qwen3
    ("qwen3", "", "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?", "\nThe user greets me.\n",
     "\n\nHello! How can I help?"),
    ("qwen3", QWEN3_NO_THINK_PROMPT, "Hello! How can I help?", None, "Hello! How can I help?"),
    ("qwen3", "", "no tags here", None, "no tags here"),
    ("qwen3", "", "abc</think>xyz", None, "abc</think>xyz"),
    ("qwen3", "", "<think>truncated reasoning", "truncated reasoning", None),
    ("qwen3", "", "<think></think>answer", "", "answer"),
    ("qwen3", "", "<thi", None, "<thi"),
    ("qwen3", "", "  \n", None, "  \n"),
    ("qwen3", QWEN3_THINKING_PROMPT, "Greeting.\n</think>\n\nHello!", "Greeting.\n", "\n\nHello!"),
    ("qwen3", QWEN3_THINKING_PROMPT, "thinking, cut off", "thinking, cut off", None),
    # Granite 3.2
    ("granite", "", "Here is my thought process:\n1. The user wants a haiku.\n2. Keep 5-7-5.\n\nHere is my response:"
                    "\n\nAutumn moonlight", "\n1. The user wants a haiku.\n2. Keep 5-7-5.\n\n", "\n\nAutumn moonlight"),
    ("granite", "", "Here's my thought process: short. Here's my response: ok", " short. ", " ok"),
    ("granite", "", "Here's my thought process:x Here is my response:y", "x ", "y"),
    ("granite", "", "Here is my thought process: Here is a plan. Here is my response: done", " Here is a plan. ",
     " done"),
    ("granite", "", "Just an answer, no thinking.", None, "Just an answer, no thinking."),
    ("granite", "", "Here is the answer.", None, "Here is the answer."),
    ("granite", "", "Here", None, "Here"),
    ("granite", "", "Here is my thought process: cut off", " cut off", None),
    ("granite", "", "Here is my thought process: x Here is my response:", " x ", None),
    ("granite", "", "Here is my thought process: x Here is my resp", " x Here is my resp", None),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def parser(name, prompt=""):
    return ReasoningParserManager.get_reasoning_parser(name)(None, prompt)


def stream(p, chunks):
    """Feed `chunks` in order (the last as final); the joined reasoning and content, checking each delta."""
    reasoning, content, previous = [], [], ""
    for i, chunk in enumerate(chunks):
        r, c = p.extract_reasoning_streaming(previous, previous + chunk, chunk, final=i == len(chunks) - 1)
        assert r != "" and c != ""  # nothing is reported as an empty string
        assert not (r and content), "reasoning after content"
        reasoning += [r] if r else []
        content += [c] if c else []
        previous += chunk
    return "".join(reasoning), "".join(content)


def token_like(text):
    return re.findall(r"\s+|\w+|[^\w\s]", text) or [""]


def chunkings(text):
    yield [text]
    yield list(text) or [""]
    yield token_like(text)
    for size in (2, 3, 5):
        yield [text[i:i + size] for i in range(0, len(text), size)] or [""]
    yield [text, ""]  # the last delta empty: a finish with no new text
    rng = random.Random(len(text))
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(text) + 1), min(4, len(text) + 1)))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize("name, prompt, output, reasoning, content", CASES, ids=IDS)
def test_whole_output(name, prompt, output, reasoning, content):
    assert parser(name, prompt).extract_reasoning(output) == (reasoning, content)


@pytest.mark.parametrize("name, prompt, output, reasoning, content", CASES, ids=IDS)
def test_streamed_in_many_chunkings(name, prompt, output, reasoning, content):
    expected = (reasoning or "", content or "")
    for chunks in chunkings(output):
        assert stream(parser(name, prompt), chunks) == expected, chunks


@pytest.mark.parametrize("name, prompt, output, reasoning, content", CASES, ids=IDS)
def test_every_cut_into_two_and_three_pieces(name, prompt, output, reasoning, content):
    expected = (reasoning or "", content or "")
    n = len(output)
    for i in range(n + 1):
        assert stream(parser(name, prompt), [output[:i], output[i:]]) == expected, i
        for j in range(i, n + 1):
            assert stream(parser(name, prompt), [output[:i], output[i:j], output[j:]]) == expected, (i, j)


def test_stream_sends_text_at_once_and_holds_back_only_a_partial_marker():
    p = parser("deepseek_r1")
    assert p.extract_reasoning_streaming("", "Let", "Let") == ("Let", None)
    assert p.extract_reasoning_streaming("Let", "Let me </", " me </") == (" me ", None)
    assert p.extract_reasoning_streaming("Let me </", "Let me </think>", "think>") == (None, None)
    assert p.extract_reasoning_streaming("Let me </think>", "Let me </think>4", "4") == (None, "4")
    p = parser("deepseek_r1")
    assert p.extract_reasoning_streaming("", "<thi", "<thi") == (None, None)
    assert p.extract_reasoning_streaming("<thi", "<thi", "", final=True) == ("<thi", None)
    p = parser("granite")
    assert p.extract_reasoning_streaming("", "Here is my", "Here is my") == (None, None)
    assert p.extract_reasoning_streaming("Here is my", "Here is my answer", " answer") == (None, "Here is my answer")


def test_a_parser_instance_streams_one_output_and_still_answers_whole_outputs():
    p = parser("deepseek_r1")
    assert p.extract_reasoning_streaming("", "ab</", "ab</") == ("ab", None)
    assert p.extract_reasoning("x</think>y") == ("x", "y")  # a fresh split, the stream's state untouched
    assert p.extract_reasoning_streaming("ab</", "ab</think>z", "think>z", final=True) == (None, "z")


class _Tokenizer:
    """Ids are indexes into a list of strings."""

    pieces = ["<think>", "</think>", "Here is my thought process:", "Here is my response:", "x", "\n"]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)


@pytest.mark.parametrize("name, ids, ended", [
    ("deepseek_r1", [0, 4], False), ("deepseek_r1", [0, 4, 1], True), ("deepseek_r1", [4, 1, 4], True),
    ("deepseek_r1", [0, 4, 1, 5, 0, 4], False), ("deepseek_r1", [4], False), ("qwen3", [0, 1, 5], True),
    ("qwen3", [4, 5], False), ("granite", [2, 4, 3, 4], True), ("granite", [2, 4], False),
])
def test_is_reasoning_end(name, ids, ended):
    p = ReasoningParserManager.get_reasoning_parser(name)(_Tokenizer())
    assert p.is_reasoning_end(ids) is ended


def test_registry_has_vllms_names_and_names_the_registered_ones():
    assert {"deepseek_r1", "qwen3", "granite"} <= set(ReasoningParserManager.names())
    with pytest.raises(KeyError, match="deepseek_r1"):
        ReasoningParserManager.get_reasoning_parser("deepseek-r1")


def test_register_module_as_decorator_and_call():
    @ReasoningParserManager.register_module(["test_reg_a", "test_reg_b"])
    class Mine(MarkerReasoningParser):
        end_markers = ("END",)

    try:
        assert ReasoningParserManager.get_reasoning_parser("test_reg_b") is Mine
        assert Mine(None).extract_reasoning("aENDb") == ("a", "b")
        with pytest.raises(KeyError, match="already registered"):
            ReasoningParserManager.register_module("test_reg_a", force=False, module=Mine)
        with pytest.raises(TypeError):
            ReasoningParserManager.register_module("test_reg_c", module=object)
    finally:
        for key in ("test_reg_a", "test_reg_b"):
            ReasoningParserManager.reasoning_parsers.pop(key, None)


def test_plugin_file_registers_a_parser(tmp_path):
    plugin = tmp_path / "my_parser.py"
    plugin.write_text(
        "from pagoda.entrypoints.openai.reasoning import MarkerReasoningParser, ReasoningParserManager\n\n"
        "@ReasoningParserManager.register_module('test_plugin_parser')\n"
        "class Mine(MarkerReasoningParser):\n"
        "    start_markers = ('[[',)\n"
        "    end_markers = (']]',)\n"
        "    starts_in_reasoning = False\n")
    try:
        import_reasoning_parser(str(plugin))
        cls = ReasoningParserManager.get_reasoning_parser("test_plugin_parser")
        assert issubclass(cls, ReasoningParser)
        assert cls(None).extract_reasoning("[[why]]so") == ("why", "so")
        assert cls(None).extract_reasoning("so") == (None, "so")
    finally:
        ReasoningParserManager.reasoning_parsers.pop("test_plugin_parser", None)


def test_plugin_errors_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--reasoning-parser-plugin .* is not a file"):
        import_reasoning_parser(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="--reasoning-parser-plugin .*failed to import: RuntimeError: boom"):
        import_reasoning_parser(str(broken))
