"""A CPU user never needs Triton: with `import triton` made to fail, LLM generates and the server
module imports (Triton kernels are imported only where a CUDA tensor needs them)."""

import subprocess
import sys

from pagoda.tiny_models import make_checkpoint

SCRIPT = r"""
import sys
sys.modules["triton"] = None  # every `import triton` now raises ImportError
from pagoda import LLM, SamplingParams
llm = LLM(sys.argv[1], max_model_len=64)
out = llm.generate("import os", SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)[0]
assert len(out.outputs[0].token_ids) == 3, out
import pagoda.entrypoints.openai.api_server  # noqa: F401
import pagoda.entrypoints.cli.main  # noqa: F401
loaded = sorted(m for m in sys.modules if m.startswith("pagoda.kernels.") and m != "pagoda.kernels.tuning"
                and m != "pagoda.kernels.rope_cache")
assert not loaded, f"Triton kernel modules imported on CPU: {loaded}"
print("generated without triton")
"""


def test_cpu_path_runs_without_triton(tmp_path):
    folder = make_checkpoint("LlamaForCausalLM", str(tmp_path / "llama"))
    result = subprocess.run([sys.executable, "-c", SCRIPT, folder], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "generated without triton" in result.stdout
