"""Serving metrics: per-request timing (stats.py), Prometheus collectors under vLLM's own `vllm:*` names
(prometheus.py) and the periodic log line (loggers.py). The frontend feeds them; nothing here talks to the engine."""
