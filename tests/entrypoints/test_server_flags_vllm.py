"""`pagoda serve` as a drop-in for `vllm serve`: every flag of vLLM's `serve --help` parses; implemented
ones work (also under vLLM's spellings: `--flag_name`, `--json-flag.key`, `--config FILE.yaml`, short
aliases, `32k`); a feature not supported yet stops the server naming the flag; flags without effect are
logged; "did you mean" names only a genuinely close flag; VLLM_API_KEY protects a real server."""

import logging
import os
import subprocess
import sys

import pytest

from openai_server_utils import REPO, httpx, output
from pagoda import engine_args_compat as compat
from pagoda.entrypoints.cli.main import build_parser
from pagoda.entrypoints.openai import cli_args, vllm_flags
from pagoda.entrypoints.openai.api_server import make_parser

# `vllm serve --help` of vLLM 0.17.1 (every group), the newer frontend flags of vllm/entrypoints/openai/
# cli_args.py, and flags of older vLLM releases that scripts still pass.
VLLM_SERVE_FLAGS = """
--aggregate-engine-logging --api-server-count -asc --config --disable-log-stats --enable-log-requests
--no-enable-log-requests --fail-on-environ-validation --no-fail-on-environ-validation --headless
--allow-credentials --no-allow-credentials --allowed-headers --allowed-methods --allowed-origins --api-key
--chat-template --chat-template-content-format --default-chat-template-kwargs --disable-access-log-for-endpoints
--disable-fastapi-docs --no-disable-fastapi-docs --disable-frontend-multiprocessing
--no-disable-frontend-multiprocessing --disable-uvicorn-access-log --no-disable-uvicorn-access-log
--enable-auto-tool-choice --no-enable-auto-tool-choice --enable-force-include-usage --enable-log-deltas
--no-enable-log-deltas --enable-log-outputs --enable-offline-docs --enable-prompt-tokens-details
--enable-request-id-headers --no-enable-request-id-headers --enable-server-load-tracking --enable-ssl-refresh
--enable-tokenizer-info-endpoint --exclude-tools-when-tool-choice-none --h11-max-header-count
--h11-max-incomplete-event-size --host --log-config-file --log-error-stack --lora-modules --max-log-len
--middleware --port --response-role --return-tokens-as-token-ids --root-path --ssl-ca-certs --ssl-cert-reqs
--ssl-certfile --ssl-ciphers --ssl-keyfile --tokens-only --tool-call-parser --tool-parser-plugin --tool-server
--trust-request-chat-template --uds --use-gpu-for-pooling-score --uvicorn-log-level
--allow-deprecated-quantization --allowed-local-media-path --allowed-media-domains --code-revision
--config-format --convert --disable-cascade-attn --disable-sliding-window --dtype --enable-prompt-embeds
--enable-return-routed-experts --enable-sleep-mode --enforce-eager --no-enforce-eager --generation-config
--hf-config-path --hf-overrides --hf-token --io-processor-plugin --logits-processors --logprobs-mode
--max-logprobs --max-model-len --model --model-impl --override-attention-dtype --override-generation-config
--pooler-config --quantization -q --revision --runner --seed --served-model-name --skip-tokenizer-init
--tokenizer --tokenizer-mode --tokenizer-revision --trust-remote-code
--download-dir --ignore-patterns --load-format --model-loader-extra-config --pt-load-map-location
--safetensors-load-strategy --use-tqdm-on-load --no-use-tqdm-on-load
--attention-backend --reasoning-parser --reasoning-parser-plugin
--all2all-backend --cp-kv-cache-interleave-size --data-parallel-address -dpa --data-parallel-backend -dpb
--data-parallel-external-lb -dpe --data-parallel-hybrid-lb -dph --data-parallel-rank -dpn
--data-parallel-rpc-port -dpp --data-parallel-size -dp --data-parallel-size-local -dpl
--data-parallel-start-rank -dpr --dbo-decode-token-threshold --dbo-prefill-token-threshold
--dcp-kv-cache-interleave-size --decode-context-parallel-size -dcp --disable-custom-all-reduce
--disable-nccl-for-dp-synchronization --distributed-executor-backend --enable-dbo --enable-elastic-ep
--enable-eplb --enable-expert-parallel -ep --eplb-config --expert-placement-strategy --master-addr
--master-port --max-parallel-loading-workers --nnodes -n --node-rank -r --pipeline-parallel-size -pp
--prefill-context-parallel-size -pcp --ray-workers-use-nsight --tensor-parallel-size -tp --ubatch-size
--worker-cls --worker-extension-cls
--block-size --calculate-kv-scales --enable-prefix-caching --no-enable-prefix-caching --gpu-memory-utilization
--kv-cache-dtype --kv-cache-memory-bytes --kv-offloading-backend --kv-offloading-size --kv-sharing-fast-prefill
--mamba-block-size --mamba-cache-dtype --mamba-cache-mode --mamba-ssm-cache-dtype --num-gpu-blocks-override
--prefix-caching-hash-algo --swap-space
--cpu-offload-gb --cpu-offload-params --offload-backend --offload-group-size --offload-num-in-group
--offload-params --offload-prefetch-step
--enable-mm-embeds --interleave-mm-strings --language-model-only --limit-mm-per-prompt --media-io-kwargs
--mm-encoder-attn-backend --mm-encoder-only --mm-encoder-tp-mode --mm-processor-cache-gb
--mm-processor-cache-type --mm-processor-kwargs --mm-shm-cache-max-object-size-mb --skip-mm-profiling
--video-pruning-rate
--default-mm-loras --enable-lora --no-enable-lora --enable-tower-connector-lora --fully-sharded-loras
--lora-dtype --max-cpu-loras --max-lora-rank --max-loras --specialize-active-lora
--collect-detailed-traces --cudagraph-metrics --enable-layerwise-nvtx-tracing --enable-logging-iteration-details
--enable-mfu-metrics --kv-cache-metrics --kv-cache-metrics-sample --otlp-traces-endpoint
--show-hidden-metrics-for-version
--async-scheduling --disable-chunked-mm-input --disable-hybrid-kv-cache-manager --enable-chunked-prefill
--long-prefill-token-threshold --max-long-partial-prefills --max-num-batched-tokens --max-num-partial-prefills
--max-num-seqs --scheduler-cls --scheduling-policy --stream-interval
--cudagraph-capture-sizes --max-cudagraph-capture-size --enable-flashinfer-autotune --moe-backend
--additional-config --attention-config -ac --compilation-config -cc --ec-transfer-config --kernel-config
--kv-events-config --kv-transfer-config --optimization-level -O --performance-mode --profiler-config
--speculative-config --structured-outputs-config --weight-transfer-config
--grpc --enable-per-request-metrics --fingerprint-mode --fingerprint-value --cohere-is-reasoning-model
--cohere-format --data-parallel-supervisor-port --dp-supervisor-probe-interval-s --dp-supervisor-probe-timeout-s
--dp-supervisor-probe-failure-threshold --enable-flash-late-interaction --data-parallel-multi-port-external-lb
--use-v2-block-manager --guided-decoding-backend --rope-scaling --rope-theta --speculative-model
--num-speculative-tokens --num-scheduler-steps --max-seq-len-to-capture --disable-log-requests --preemption-mode
--num-lookahead-slots --cuda-graph-sizes --disable-mm-preprocessor-cache --lora-extra-vocab-size
--enable-lora-bias --scheduler-delay-factor --disable-async-output-proc --multi-step-stream-outputs
--logits-processor-pattern --task --enable-reasoning
""".split()
ALL_OPTIONS = compat.ENGINE_OPTIONS + vllm_flags.SERVER_OPTIONS


def serve(argv):
    """`pagoda serve MODEL argv...` parsed (SystemExit for a parse error), as the console script does."""
    return build_parser().parse_args(["serve", *argv])


def validated(argv):
    args = serve(argv)
    cli_args.validate_args(args)
    return args


def sample_argv(action):
    """The flag with a value its parser takes."""
    flag = action.option_strings[0]
    if action.nargs == 0:
        return [flag]
    if action.choices:
        return [flag, str(list(action.choices)[0])]
    if action.type is compat.parse_json:
        return [flag, "{}"]
    if action.nargs == "?":
        return [flag]
    name = getattr(action.type, "__name__", "")
    return [flag, "1" if name in ("int", "float", "human_readable_int", "human_readable_int_or_auto") else "x"]


@pytest.mark.parametrize("parser_of", [lambda: make_parser(), lambda: build_parser()._subparsers._group_actions[0]
                                       .choices["serve"]], ids=["api_server", "pagoda-serve"])
def test_every_vllm_serve_flag_is_recognized(parser_of):
    parser = parser_of()
    known = parser._option_string_actions
    assert [f for f in VLLM_SERVE_FLAGS if f not in known] == []
    for flag in VLLM_SERVE_FLAGS:
        if flag != "--config":
            parser.parse_args(["--model", "m", *sample_argv(known[flag])])  # no SystemExit


def _default_argv(opt):
    """The option's default written on the command line ([] where vLLM writes nothing)."""
    if opt.default is None or (isinstance(opt.default, (list, dict, str)) and not opt.default):
        return []
    if opt.kind == compat.BOOL:
        return [opt.flag if opt.default else "--no-" + opt.flag[2:]]
    if opt.kind in (compat.STRS, compat.INTS):
        return [opt.flag, *map(str, opt.default)]
    return [opt.flag, str(opt.default)]


def test_default_values_of_unimplemented_flags_are_fine(model_dir):
    argv = [a for opt in ALL_OPTIONS for a in _default_argv(opt)]
    argv += ["-tp", "1", "--kv-cache-dtype", "auto", "--distributed-executor-backend", "uni", "--quantization",
             "None", "--limit-mm-per-prompt", '{"image": 0}', "--api-server-count", "1", "--model-impl", "vllm"]
    args = validated([model_dir, *argv])
    assert args.tensor_parallel_size == 1 and args.enable_lora is False and args.kv_cache_dtype == "auto"
    assert validated([model_dir, "--distributed-executor-backend", "mp"]).distributed_executor_backend == "mp"


@pytest.mark.parametrize("argv, flag", [
    (["--enable-lora"], "--enable-lora"),
    (["--max-loras", "4"], "--max-loras"),
    (["--lora-modules", "sql=/loras/sql"], "--lora-modules"),
    (["-q", "bitsandbytes"], "--quantization"),
    (["--kv-cache-dtype", "fp8_inc"], "--kv-cache-dtype"),  # fp8, fp8_e4m3, fp8_e5m2 are implemented
    (["--cpu-offload-gb", "8"], "--cpu-offload-gb"),
    (["--speculative-config", '{"method": "eagle", "model": "some/eagle", "num_speculative_tokens": 4}'],
     "--speculative-config"),
    (["--speculative-model", "/models/draft", "--num-speculative-tokens", "4", "--speculative-model-quantization",
      "awq"], "--speculative-model-quantization"),
    (["-dp", "2"], "--data-parallel-size"),
    (["--distributed-executor-backend", "external_launcher"], "--distributed-executor-backend"),
    (["--structured-outputs-config", '{"reasoning_parser_plugin": "/p.py"}'], "--structured-outputs-config"),
    (["--load-format", "gguf"], "--load-format"),
    (["--api-server-count", "4"], "--api-server-count"),
    (["--api-key", "key-one", "key-two"], "--api-key"),
    (["--middleware", "my.module.Middleware"], "--middleware"),
])
def test_not_supported_yet_stops_naming_the_flag(argv, flag, model_dir):
    with pytest.raises(ValueError, match="not supported yet") as info:
        validated([model_dir, *argv])
    assert flag in str(info.value)


def test_not_supported_yet_stops_the_real_server_before_loading(model_dir):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "pagoda.entrypoints.cli.main", "serve", model_dir, "--port", "0",
                             "--enable-lora", "--max-loras", "4"], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env=env)
    assert result.returncode == 1
    assert "--enable-lora" in output(result) and "not supported yet" in output(result)
    assert "engine core" not in output(result)  # stopped before the engine core was started


def test_no_effect_flags_are_logged(model_dir, caplog, monkeypatch):
    monkeypatch.setattr(compat, "_logged", set())
    argv = ["--use-v2-block-manager", "--disable-frontend-multiprocessing", "--swap-space", "16",
            "--disable-sliding-window", "--num-scheduler-steps", "8", "--max-seq-len-to-capture", "4096",
            "--prefix-caching-hash-algo", "xxhash", "-O3", "--attention-backend", "FLASH_ATTN"]
    with caplog.at_level(logging.WARNING, logger="pagoda.engine_args_compat"):
        args = validated([model_dir, *argv])
        cli_args.engine_args_from(args)  # built again by the server: no second log line
    lines = [r.getMessage() for r in caplog.records]
    for flag in ("--use-v2-block-manager", "--disable-frontend-multiprocessing", "--swap-space",
                 "--disable-sliding-window", "--num-scheduler-steps", "--max-seq-len-to-capture",
                 "--prefix-caching-hash-algo", "--optimization-level", "--attention-backend"):
        assert len([line for line in lines if line.startswith(flag + " ") and "has no effect" in line]) == 1, flag
    assert any("its own process" in line for line in lines)


def test_vllm_spellings_of_implemented_flags(model_dir):
    args = validated([model_dir, "--max_model_len", "1k", "--max-num-batched-tokens=2K", "-tp", "1",
                      "--hf-overrides.max_position_embeddings", "2048", "--gpu_memory_utilization=0.5",
                      "--no-enable-log-requests", "--runner", "pooling", "--tokenizer-mode", "hf",
                      "--no-disable-uvicorn-access-log", "--pooler-config.pooling_type", "MEAN"])
    assert (args.max_model_len, args.max_num_batched_tokens, args.gpu_memory_utilization) == (1000, 2048, 0.5)
    assert args.hf_overrides == {"max_position_embeddings": 2048} and args.disable_log_requests is True
    engine_args = cli_args.engine_args_from(args)
    assert engine_args.runner == "pooling" and engine_args.pooler_config == {"pooling_type": "MEAN"}
    assert validated([model_dir, "--max-model-len", "auto"]).max_model_len is None
    assert validated([model_dir, "--enable-log-requests"]).disable_log_requests is False
    assert validated([model_dir]).disable_log_requests is True  # off by default, as vLLM's since 0.10.2
    assert validated([model_dir, "--disable-log-requests"]).disable_log_requests is True  # the older spelling
    assert validated([model_dir, "--no-disable-log-requests"]).disable_log_requests is False
    assert validated([model_dir, "--enable-log-requests", "--no-disable-log-requests"]).disable_log_requests is False
    for contradiction in (["--enable-log-requests", "--disable-log-requests"],
                          ["--no-enable-log-requests", "--no-disable-log-requests"]):
        with pytest.raises(ValueError, match="enable-log-requests contradicts"):
            validated([model_dir, *contradiction])
    # --download-dir and the rope overrides reach the engine arguments
    args = validated([model_dir, "--download-dir", "/hf-cache", "--rope-theta", "500000",
                      "--rope-scaling", '{"rope_type": "linear", "factor": 2.0}'])
    engine_args = cli_args.engine_args_from(args)
    assert engine_args.download_dir == "/hf-cache" and engine_args.rope_theta == 500000.0
    assert engine_args.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_config_yaml_file(model_dir, tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text(f"model: {model_dir}\nmax-model-len: 512\nenforce_eager: true\nenable-prefix-caching: false\n"
                      "served-model-name: [tiny, alias]\nhf-overrides:\n  max_position_embeddings: 1024\n"
                      "port: 9000\ndisable-log-requests: false\n")
    args = validated(["--config", str(config), "--port", "9100"])  # the command line wins over the file
    assert args.model == model_dir and args.max_model_len == 512 and args.enforce_eager is True
    assert args.enable_prefix_caching is False and args.served_model_name == ["tiny", "alias"]
    assert args.hf_overrides == {"max_position_embeddings": 1024} and args.port == 9100
    args = validated([model_dir, "--config", str(config)])  # a positional model stays first
    assert args.model_tag == model_dir and args.port == 9000


@pytest.mark.parametrize("content, message", [
    ("max-model-len: [1, 2", "is not valid YAML"),
    ("- a\n- b\n", "must map flag names to values"),
    ("max-modle-len: 512\n", "did you mean --max-model-len?"),
], ids=["bad-yaml", "not-a-mapping", "misspelled-key"])
def test_bad_config_file_is_named(content, message, model_dir, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(SystemExit) as info:
        serve([model_dir, "--config", str(config)])
    assert info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve([model_dir, "--config", str(tmp_path / "missing.yaml")])
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("typo, hint", [
    ("--enable-lorra", "--enable-lora"), ("--max-modle-len", "--max-model-len"), ("--prot", "--port"),
    ("--max-model", "--max-model-len"), ("--gpu-memory-utilisation", "--gpu-memory-utilization"),
    ("--tensor-paralel-size", "--tensor-parallel-size"), ("--foo-bar-baz", None), ("--lora", None),
    ("--enable", None), ("--download-directory", None),
])
def test_did_you_mean_names_only_a_close_flag(typo, hint, model_dir, capsys):
    with pytest.raises(SystemExit) as info:
        serve([model_dir, typo, "1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"unrecognized arguments: {typo}" in err
    if hint is None:
        assert "did you mean" not in err
    else:
        assert f"(did you mean {hint}?)" in err


def test_api_key_precedence(model_dir, monkeypatch):
    monkeypatch.delenv("PAGODA_API_KEY", raising=False)
    monkeypatch.setenv("VLLM_API_KEY", "from-vllm")
    assert validated([model_dir]).api_key == "from-vllm"
    assert validated([model_dir, "--api-key", "from-flag"]).api_key == "from-flag"  # the flag wins, as vLLM's
    monkeypatch.setenv("PAGODA_API_KEY", "from-pagoda")
    assert validated([model_dir]).api_key == "from-pagoda"
    monkeypatch.setenv("PAGODA_API_KEY", "")
    monkeypatch.setenv("VLLM_API_KEY", "")
    assert validated([model_dir]).api_key is None  # empty means unset


def test_vllm_api_key_protects_a_real_server(start_server, model_dir):
    key = "vllm-env-key-789"
    server = start_server(["--model", model_dir, "--max-model-len", "256", "--disable-frontend-multiprocessing",
                           "--swap-space", "8", "-tp", "1", "--kv-cache-dtype", "auto", "--max-num-seqs", "8"],
                          env={"VLLM_API_KEY": key, "PAGODA_API_KEY": ""})
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401
    wrong = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401
    ok = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == model_dir
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200  # open, as before
    log = server.log()
    assert "--disable-frontend-multiprocessing" in log and "has no effect" in log


def test_limit_mm_per_prompt_forms_reach_the_config(model_dir):
    def config(argv):
        return cli_args.engine_args_from(validated([model_dir, *argv])).create_config()

    for argv in (["--limit-mm-per-prompt", '{"image": 0}'], ["--limit-mm-per-prompt", "image=0"],
                 ["--limit-mm-per-prompt.image", "0"]):
        assert config(argv).model.limit_mm_per_prompt == {"image": 0}
    with pytest.raises(ValueError, match=r"--limit-mm-per-prompt.*takes no images"):
        config(["--limit-mm-per-prompt", "image=2"])
    with pytest.raises(ValueError, match=r"--limit-mm-per-prompt.*'video' is not supported yet"):
        config(["--limit-mm-per-prompt.video", "2"])
