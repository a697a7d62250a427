"""Speculative-decoding metrics: vLLM's four counters on /metrics and its periodic SpecDecoding log line.

The core's scheduler stats carry cumulative `spec_decode_*` counters (only when speculative decoding is
configured); PrometheusStatLogger applies them as growth, LoggingStatLogger logs the interval's growth.
"""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pagoda.metrics import loggers as loggers_module
from pagoda.metrics.loggers import LoggingStatLogger
from pagoda.metrics.prometheus import PrometheusStatLogger
from pagoda.metrics.stats import IterationStats

MODEL = "tiny-model"
LABELS = {"model_name": MODEL, "engine": "0"}
SPEC_FAMILIES = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens", "vllm:spec_decode_num_accepted_tokens_per_pos")


def sched(drafts=None, draft_tokens=0, accepted=0, per_pos=None, **extra):
    stats = {"num_running": 1, "num_waiting": 0, "kv_cache_usage": 0.1, "prefix_cache_queries": 0,
             "prefix_cache_hits": 0, "num_preemptions": 0, **extra}
    if drafts is not None:
        stats.update(spec_decode_num_drafts=drafts, spec_decode_num_draft_tokens=draft_tokens,
                     spec_decode_num_accepted_tokens=accepted, spec_decode_num_accepted_tokens_per_pos=per_pos)
    return stats


def families(prometheus: PrometheusStatLogger) -> dict:
    return {f.name: f for f in text_string_to_metric_families(prometheus.render().decode())}


def spec_values(prometheus: PrometheusStatLogger) -> dict:
    """{'drafts': v, 'draft_tokens': v, 'accepted': v, 'per_pos': {position: v}} from the rendered text."""
    fams = families(prometheus)
    out = {"per_pos": {}}
    for short, name in (("drafts", SPEC_FAMILIES[0]), ("draft_tokens", SPEC_FAMILIES[1]),
                        ("accepted", SPEC_FAMILIES[2])):
        (sample,) = [s for s in fams[name].samples if s.name == name + "_total"]
        assert sample.labels == LABELS
        out[short] = sample.value
    for sample in fams[SPEC_FAMILIES[3]].samples:
        if sample.name == SPEC_FAMILIES[3] + "_total":
            assert {k: v for k, v in sample.labels.items() if k != "position"} == LABELS
            out["per_pos"][sample.labels["position"]] = sample.value
    return out


# ---- Prometheus ---------------------------------------------------------------------------------
def test_no_spec_keys_no_spec_metrics():
    prometheus = PrometheusStatLogger(MODEL, 512)
    prometheus.record(IterationStats(num_generation_tokens=3, scheduler_stats=sched()))
    text = prometheus.render().decode()
    assert "spec_decode" not in text
    assert "vllm:num_requests_running" in text


def test_counters_types_labels_and_growth():
    prometheus = PrometheusStatLogger(MODEL, 512)
    prometheus.record(IterationStats(scheduler_stats=sched()))
    assert "spec_decode" not in prometheus.render().decode()
    # The first stats that carry the keys create every family, every position at 0 until it happens.
    prometheus.record(IterationStats(scheduler_stats=sched(0, 0, 0, [0, 0, 0])))
    fams = families(prometheus)
    for name in SPEC_FAMILIES:
        assert fams[name].type == "counter", name
    assert spec_values(prometheus) == {"drafts": 0, "draft_tokens": 0, "accepted": 0,
                                       "per_pos": {"0": 0, "1": 0, "2": 0}}
    prometheus.record(IterationStats(scheduler_stats=sched(4, 12, 7, [4, 2, 1])))
    prometheus.record(IterationStats(scheduler_stats=sched(10, 30, 15, [9, 5, 1])))
    assert spec_values(prometheus) == {"drafts": 10, "draft_tokens": 30, "accepted": 15,
                                       "per_pos": {"0": 9, "1": 5, "2": 1}}
    text = prometheus.render().decode()
    assert 'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="tiny-model",position="1"} 5.0' \
        in text
    # Stats without the keys (e.g. the engine is down) leave the counters where they are.
    prometheus.record(IterationStats(scheduler_stats={"num_running": 0, "num_waiting": 0, "kv_cache_usage": 0.0}))
    assert spec_values(prometheus)["drafts"] == 10


def test_counters_survive_an_engine_core_restart():
    prometheus = PrometheusStatLogger(MODEL, 512)
    prometheus.record(IterationStats(scheduler_stats=sched(10, 30, 15, [9, 5, 1])))
    # The core dies and a new one starts: its cumulative counters start from 0 again.
    prometheus.record(IterationStats(engine_healthy=False, engine_restarts=0,
                                     scheduler_stats={"num_running": 0, "num_waiting": 0, "kv_cache_usage": 0.0}))
    prometheus.record(IterationStats(engine_healthy=True, engine_restarts=1))
    prometheus.record(IterationStats(scheduler_stats=sched(2, 6, 3, [2, 1, 0])))
    assert spec_values(prometheus) == {"drafts": 12, "draft_tokens": 36, "accepted": 18,
                                       "per_pos": {"0": 11, "1": 6, "2": 1}}
    assert families(prometheus)["pagoda:engine_restarts"].samples[0].value == 1


# ---- the log line -------------------------------------------------------------------------------
SPEC_LINE = re.compile(
    r"SpecDecoding metrics: Mean acceptance length: (?P<mal>[\d.]+), "
    r"Accepted throughput: (?P<acc_tp>[\d.]+) tokens/s, Drafted throughput: (?P<draft_tp>[\d.]+) tokens/s, "
    r"Accepted: (?P<accepted>\d+) tokens, Drafted: (?P<drafted>\d+) tokens, "
    r"Per-position acceptance rate: (?P<per_pos>[\d., ]+), Avg Draft acceptance rate: (?P<rate>[\d.]+)%$")


@pytest.fixture
def clock(monkeypatch):
    """A fake monotonic clock for the loggers module: set `clock.now`."""
    class Clock:
        now = 1000.0
    monkeypatch.setattr(loggers_module, "time", SimpleNamespace(monotonic=lambda: Clock.now))
    return Clock


def spec_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("SpecDecoding metrics")]


def test_log_line_over_two_intervals(clock, caplog):
    caplog.set_level(logging.DEBUG, logger="pagoda.metrics")
    stat_logger = LoggingStatLogger()
    # Interval 1 (10 s): two records; the line covers the growth since the logger started (from 0).
    stat_logger.record(IterationStats(num_generation_tokens=8, scheduler_stats=sched(2, 6, 3, [2, 1, 0])))
    stat_logger.record(IterationStats(num_generation_tokens=12, scheduler_stats=sched(8, 24, 12, [7, 4, 1])))
    clock.now += 10.0
    stat_logger.log()
    (line,) = spec_lines(caplog)
    assert line == stat_logger.last_spec_line
    m = SPEC_LINE.match(line)
    assert m, line
    assert m["accepted"] == "12" and m["drafted"] == "24"
    assert float(m["mal"]) == pytest.approx(1 + 12 / 8, abs=0.005)  # vLLM: 1 + accepted / drafts
    assert m["acc_tp"] == "1.20" and m["draft_tp"] == "2.40"
    assert m["per_pos"] == "0.875, 0.500, 0.125"  # accepted at each position / drafts
    assert m["rate"] == "50.0"
    assert [r.levelno for r in caplog.records if r.getMessage().startswith("SpecDecoding")] == [logging.INFO]
    caplog.clear()
    # Interval 2 (4 s): only the growth since the last log.
    stat_logger.record(IterationStats(num_generation_tokens=6, scheduler_stats=sched(12, 36, 20, [11, 7, 2])))
    clock.now += 4.0
    stat_logger.log()
    (line,) = spec_lines(caplog)
    m = SPEC_LINE.match(line)
    assert m["accepted"] == "8" and m["drafted"] == "12"
    assert m["mal"] == "3.00"
    assert m["acc_tp"] == "2.00" and m["draft_tp"] == "3.00"
    assert m["per_pos"] == "1.000, 0.750, 0.250"
    assert m["rate"] == "66.7"
    caplog.clear()
    # Interval 3: the counters did not move (no drafts verified): no SpecDecoding line.
    stat_logger.record(IterationStats(num_generation_tokens=1, scheduler_stats=sched(12, 36, 20, [11, 7, 2])))
    clock.now += 5.0
    stat_logger.log()
    assert spec_lines(caplog) == [] and stat_logger.last_spec_line is None
    assert any(r.getMessage().startswith("Avg prompt throughput") for r in caplog.records)


def test_no_spec_keys_no_spec_line(clock, caplog):
    caplog.set_level(logging.DEBUG, logger="pagoda.metrics")
    stat_logger = LoggingStatLogger()
    stat_logger.record(IterationStats(num_generation_tokens=8, scheduler_stats=sched()))
    clock.now += 10.0
    line = stat_logger.log()
    assert line.startswith("Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 0.8 tokens/s")
    assert spec_lines(caplog) == [] and stat_logger.last_spec_line is None
    assert len(caplog.records) == 1


def test_log_line_after_an_engine_core_restart(clock, caplog):
    caplog.set_level(logging.DEBUG, logger="pagoda.metrics")
    stat_logger = LoggingStatLogger()
    stat_logger.record(IterationStats(scheduler_stats=sched(10, 30, 15, [9, 5, 1])))
    clock.now += 1.0
    stat_logger.log()
    caplog.clear()
    # In the next interval: 2 more drafts on the old core, then it dies; the new core counts from 0.
    stat_logger.record(IterationStats(num_generation_tokens=1, scheduler_stats=sched(12, 36, 16, [10, 5, 1])))
    stat_logger.record(IterationStats(engine_healthy=False, engine_restarts=0,
                                      scheduler_stats={"num_running": 0, "num_waiting": 0, "kv_cache_usage": 0.0}))
    stat_logger.record(IterationStats(engine_healthy=True, engine_restarts=1))
    stat_logger.record(IterationStats(num_generation_tokens=1, scheduler_stats=sched(3, 9, 6, [3, 2, 1])))
    clock.now += 1.0
    stat_logger.log()
    m = SPEC_LINE.match(spec_lines(caplog)[0])
    assert (m["drafted"], m["accepted"]) == ("15", "7")  # (36 - 30) + 9, (16 - 15) + 6
    assert m["per_pos"] == "0.800, 0.400, 0.200"  # (1 + 3) / 5, (0 + 2) / 5, (0 + 1) / 5
