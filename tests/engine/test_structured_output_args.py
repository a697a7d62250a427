"""Structured output's engine options (issue 18): vLLM's structured_outputs_config and its older guided_decoding_*
flags, as `LLM(...)` keywords and `--kebab-case` flags, all arrive as PagodaConfig.structured_outputs; both
spellings may be mixed but must agree; bad values and vLLM keys Pagoda does not implement are errors naming the
keyword and the flag."""

import pytest

from pagoda.config import StructuredOutputsConfig
from pagoda.engine_args import EngineArgs
from pagoda.entrypoints.cli.main import build_parser
from pagoda.entrypoints.openai import cli_args


def config_of(**kwargs) -> StructuredOutputsConfig:
    args = EngineArgs.from_kwargs(model="unused-model", **kwargs)
    args.check_options()  # the start-up check (no model folder needed) builds it too
    return args.create_structured_outputs_config()


def cli_config_of(argv, model="unused-model") -> StructuredOutputsConfig:
    args = build_parser().parse_args(["serve", model, *argv])
    return cli_args.engine_args_from(args).create_structured_outputs_config()


SPELLINGS = [
    # (LLM keywords, the same as flags, the config they make)
    ({}, [], {}),
    ({"structured_outputs_config": {"backend": "guidance"}}, ["--structured-outputs-config", '{"backend": "guidance"}'],
     {"backend": "guidance"}),
    ({"structured_outputs_config": {"backend": "xgrammar", "disable_fallback": True, "disable_any_whitespace": True,
                                    "disable_additional_properties": True}},
     ["--structured-outputs-config", '{"backend": "xgrammar", "disable_fallback": true, "disable_any_whitespace": '
      'true, "disable_additional_properties": true}'],
     {"backend": "xgrammar", "disable_fallback": True, "disable_any_whitespace": True,
      "disable_additional_properties": True}),
    ({"structured_outputs_config": {"backend": "outlines"}}, ["--structured-outputs-config.backend", "outlines"],
     {"backend": "outlines"}),
    ({"structured_outputs_config": {"enable_in_reasoning": True, "reasoning_parser": ""}},
     ["--structured-outputs-config", '{"enable_in_reasoning": true, "reasoning_parser": ""}'],
     {"enable_in_reasoning": True}),
    ({"structured_outputs_config": {"reasoning_parser": "deepseek_r1"}},
     ["--structured-outputs-config", '{"reasoning_parser": "deepseek_r1"}'],
     {"reasoning_parser": "deepseek_r1", "reasoning_markers": ("<think>", "</think>")}),
    ({"guided_decoding_backend": "guidance"}, ["--guided-decoding-backend", "guidance"], {"backend": "guidance"}),
    ({"guided_decoding_backend": "auto"}, ["--guided-decoding-backend", "auto"], {}),
    ({"guided_decoding_backend": "xgrammar:no-fallback,disable-any-whitespace"},
     ["--guided-decoding-backend", "xgrammar:no-fallback,disable-any-whitespace"],
     {"backend": "xgrammar", "disable_fallback": True, "disable_any_whitespace": True}),
    ({"guided_decoding_backend": "guidance:no-additional-properties"},
     ["--guided-decoding-backend", "guidance:no-additional-properties"],
     {"backend": "guidance", "disable_additional_properties": True}),
    ({"guided_decoding_disable_fallback": True}, ["--guided-decoding-disable-fallback"], {"disable_fallback": True}),
    ({"guided_decoding_disable_any_whitespace": True}, ["--guided-decoding-disable-any-whitespace"],
     {"disable_any_whitespace": True}),
    ({"guided_decoding_disable_additional_properties": True}, ["--guided-decoding-disable-additional-properties"],
     {"disable_additional_properties": True}),
    ({"guided_decoding_disable_fallback": False}, ["--no-guided-decoding-disable-fallback"], {}),
    # both spellings, agreeing
    ({"structured_outputs_config": {"backend": "guidance"}, "guided_decoding_backend": "guidance",
      "guided_decoding_disable_fallback": True},
     ["--structured-outputs-config", '{"backend": "guidance"}', "--guided-decoding-backend", "guidance",
      "--guided-decoding-disable-fallback"], {"backend": "guidance", "disable_fallback": True}),
    ({"structured_outputs_config": {"disable_any_whitespace": True}, "guided_decoding_backend": "xgrammar"},
     ["--structured-outputs-config", '{"disable_any_whitespace": true}', "--guided-decoding-backend", "xgrammar"],
     {"backend": "xgrammar", "disable_any_whitespace": True}),
]


@pytest.mark.parametrize("kwargs, argv, expected", SPELLINGS, ids=[str(i) for i in range(len(SPELLINGS))])
def test_every_spelling_makes_the_config(kwargs, argv, expected):
    assert config_of(**kwargs) == StructuredOutputsConfig(**expected)
    assert cli_config_of(argv) == StructuredOutputsConfig(**expected)


def test_llm_takes_a_structured_outputs_config_object():
    given = StructuredOutputsConfig(backend="guidance", disable_additional_properties=True)
    assert config_of(structured_outputs_config=given) == given


def test_create_config_carries_it(llama_dir):
    config = EngineArgs(model=llama_dir, structured_outputs_config={"backend": "guidance"},
                        guided_decoding_disable_any_whitespace=True).create_config()
    assert config.structured_outputs == StructuredOutputsConfig(backend="guidance", disable_any_whitespace=True)
    assert EngineArgs(model=llama_dir).create_config().structured_outputs == StructuredOutputsConfig()


def test_the_flags_are_engine_flags_with_help():
    parser = build_parser()._subparsers._group_actions[0].choices["serve"]
    actions = parser._option_string_actions
    for flag in ("--structured-outputs-config", "--guided-decoding-backend", "--guided-decoding-disable-fallback",
                 "--guided-decoding-disable-any-whitespace", "--guided-decoding-disable-additional-properties"):
        text = actions[flag].help or ""
        assert len(text) > 40 and "not supported yet" not in text, (flag, text)


CONFLICTS = [
    ({"structured_outputs_config": {"backend": "xgrammar"}, "guided_decoding_backend": "guidance"},
     ["--structured-outputs-config", "--guided-decoding-backend"]),
    ({"structured_outputs_config": {"disable_fallback": False}, "guided_decoding_disable_fallback": True},
     ["--structured-outputs-config", "--guided-decoding-disable-fallback"]),
    ({"structured_outputs_config": {"disable_any_whitespace": False},
      "guided_decoding_backend": "xgrammar:disable-any-whitespace"},
     ["--structured-outputs-config", "--guided-decoding-backend"]),
    ({"structured_outputs_config": {"backend": "xgrammar:no-fallback", "disable_fallback": False}},
     ["--structured-outputs-config"]),
]


@pytest.mark.parametrize("kwargs, flags", CONFLICTS, ids=[str(i) for i in range(len(CONFLICTS))])
def test_two_spellings_that_disagree_name_both(kwargs, flags):
    with pytest.raises(ValueError) as info:
        config_of(**kwargs)
    message = str(info.value)
    assert "two spellings of one setting" in message and all(flag in message for flag in flags), message


BAD = [
    ({"guided_decoding_backend": "lm-format-enforcer"}, "--guided-decoding-backend", "transformers 5"),
    ({"structured_outputs_config": {"backend": "lm-format-enforcer"}}, "--structured-outputs-config",
     "transformers 5"),
    ({"guided_decoding_backend": "transformers"}, "--guided-decoding-backend", "must be one of"),
    ({"guided_decoding_backend": "xgrammar:fast"}, "--guided-decoding-backend", "unknown backend option 'fast'"),
    ({"structured_outputs_config": {"bakend": "xgrammar"}}, "--structured-outputs-config", "unknown key"),
    ({"structured_outputs_config": {"reasoning_parser": "granite"}}, "--structured-outputs-config",
     "'reasoning_parser' must be one of"),
    ({"structured_outputs_config": {"reasoning_parser_plugin": "/p.py"}}, "--structured-outputs-config",
     "not supported yet"),
    ({"structured_outputs_config": {"enable_in_reasoning": "yes"}}, "--structured-outputs-config", "true or false"),
    ({"structured_outputs_config": {"disable_fallback": "yes"}}, "--structured-outputs-config", "true or false"),
    ({"structured_outputs_config": {"backend": 3}}, "--structured-outputs-config", "must be a string"),
    ({"structured_outputs_config": ["xgrammar"]}, "--structured-outputs-config", "JSON object"),
]


@pytest.mark.parametrize("kwargs, flag, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_values_name_keyword_and_flag(kwargs, flag, words):
    with pytest.raises((ValueError, TypeError)) as info:
        config_of(**kwargs)
    message = str(info.value)
    keyword = flag[2:].replace("-", "_")
    assert keyword in message and flag in message and words in message, message


def test_the_server_stops_at_start_up_naming_the_flag(llama_dir):
    args = build_parser().parse_args(["serve", llama_dir, "--guided-decoding-backend", "lm-format-enforcer"])
    with pytest.raises(ValueError, match="--guided-decoding-backend"):
        cli_args.validate_args(args)


@pytest.mark.parametrize("argv, expected", [
    (["--reasoning-parser", "deepseek_r1"], ("deepseek_r1", ("<think>", "</think>"))),
    (["--reasoning-parser", "qwen3", "--structured-outputs-config", '{"backend": "guidance"}'],
     ("qwen3", ("<think>", "</think>"))),
    (["--reasoning-parser", "granite"], ("", None)),  # text markers: the grammar constrains the reasoning too
    (["--reasoning-parser", "deepseek_r1", "--structured-outputs-config", '{"enable_in_reasoning": true}'],
     ("deepseek_r1", ("<think>", "</think>"))),
    ([], ("", None)),
])
def test_the_servers_reasoning_parser_tells_the_engine_where_reasoning_ends(llama_dir, argv, expected):
    args = build_parser().parse_args(["serve", llama_dir, *argv])
    config = cli_args.engine_args_from(args).create_structured_outputs_config()
    assert (config.reasoning_parser, config.reasoning_markers) == expected
