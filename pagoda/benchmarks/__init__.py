"""Benchmarks: `pagoda bench throughput|latency|serve`, the speed-of-light model and the standard suite.

throughput.py / latency.py / serve.py   the three commands (flags in `add_cli_args`, run by `main`)
datasets.py                             random token-id workloads (unique prompts, length ranges)
speed_of_light.py                       least time of a workload on given ceilings (pure functions)
hardware.py                             measured GPU ceilings (copy bandwidth, bf16 matmul rate)
hf_backend.py                           the transformers baseline
serve_metrics.py                        TTFT/TPOT/ITL/E2E metrics, vLLM's result block, sweep plot
make_model.py / suite.py                Llama-3-8B-shaped config folder; W1-W6 (scripts/bench_suite.sh)
"""
