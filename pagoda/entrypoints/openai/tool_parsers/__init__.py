"""Tool-call parsers by vLLM's names (`--tool-call-parser`); see abstract_tool_parser.py."""

from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCallInformation,
    ExtractedToolCalls,
    FunctionCall,
    ToolCall,
    ToolParser,
    ToolParserManager,
    UnknownToolParserError,
    get_tool_parser,
    import_tool_parser,
    list_tool_parsers,
    make_tool_call_id,
)
from pagoda.entrypoints.openai.tool_parsers.granite_20b_fc_tool_parser import Granite20bFCToolParser
from pagoda.entrypoints.openai.tool_parsers.granite_tool_parser import GraniteToolParser
from pagoda.entrypoints.openai.tool_parsers.hermes_tool_parser import Hermes2ProToolParser
from pagoda.entrypoints.openai.tool_parsers.internlm2_tool_parser import Internlm2ToolParser
from pagoda.entrypoints.openai.tool_parsers.jamba_tool_parser import JambaToolParser
from pagoda.entrypoints.openai.tool_parsers.llama_tool_parser import Llama3JsonToolParser
from pagoda.entrypoints.openai.tool_parsers.mistral_tool_parser import MistralToolParser
from pagoda.entrypoints.openai.tool_parsers.pythonic_tool_parser import PythonicToolParser

__all__ = [
    "DeltaFunctionCall",
    "DeltaMessage",
    "DeltaToolCall",
    "ExtractedToolCallInformation",
    "ExtractedToolCalls",
    "FunctionCall",
    "Granite20bFCToolParser",
    "GraniteToolParser",
    "Hermes2ProToolParser",
    "Internlm2ToolParser",
    "JambaToolParser",
    "Llama3JsonToolParser",
    "MistralToolParser",
    "PythonicToolParser",
    "ToolCall",
    "ToolParser",
    "ToolParserManager",
    "UnknownToolParserError",
    "get_tool_parser",
    "import_tool_parser",
    "list_tool_parsers",
    "make_tool_call_id",
]
