"""Issue 22's GPU scripts run end to end as their CPU dry runs (gloo): scripts/gpu_check_parallel.py and
scripts/allreduce_probe.py."""

import importlib.util
import json
import os

import pytest

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "..", "scripts")


def load_script(name="gpu_check_parallel"):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_on_cpu_compares_each_layout_with_one_rank(tmp_path):
    script = load_script()
    assert script.main(["--device", "cpu", "--only", "LlamaForCausalLM", "--layouts", "2x1", "1x2",
                        "--out", str(tmp_path)]) == 0
    rows = json.load(open(tmp_path / "gpu_check_parallel.json"))["rows"]
    assert [(r["check"], r["ok"]) for r in rows] == [("LlamaForCausalLM tiny tp=2 pp=1 fp32 == tp=1", True),
                                                     ("LlamaForCausalLM tiny tp=1 pp=2 fp32 == tp=1", True)]
    assert rows[0]["detail"] == f"{len(script.PROMPTS)}/{len(script.PROMPTS)} sequences equal"


def test_layouts_are_checked():
    script = load_script()
    assert script.parse_layout("2x2") == (2, 2) and script.parse_layout("4X1") == (4, 1)
    for bad in ("1x1", "2", "ax2", "0x4"):
        with pytest.raises(Exception, match="layout"):
            script.parse_layout(bad)


def test_allreduce_probe_dry_run(tmp_path):
    """As a process of its own (its ranks are spawned processes that import it by path)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "allreduce_probe.py"), "--device", "cpu", "--tp", "2",
                           "--tokens", "1,64", "--hidden", "256", "--layers", "4", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.load(open(tmp_path / "allreduce_probe.json"))
    assert [r["tokens"] for r in result["rows"]] == [1, 64] and result["rows"][1]["bytes"] == 64 * 256 * 4
    row = result["rows"][0]
    assert row["eager_us"] > 0 and row["per_layer_us"] == 2 * row["eager_us"]
    assert row["per_step_ms"] == pytest.approx(2 * 4 * row["eager_us"] / 1e3)
    assert "| 64 | 65536 |" in proc.stdout
