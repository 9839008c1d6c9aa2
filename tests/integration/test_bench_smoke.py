"""`python -m bench.run --quick` runs end to end (a smoke test: no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_produces_its_reports(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out-dir", str(tmp_path),
                             "--name", "smoke", "--work-dir", str(tmp_path / "work")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert {r["config"] for r in report["rows"]} == {"vad_ts", "vad", "whole", "whole_ts", "stream", "stream_ts"}
    assert all(r["p50_ms"] > 0 and r["raw_ms"] > 0 and r["served_model_ms"] > 0 for r in report["rows"])
    # per-stage served time: VAD only with VAD on, the Aligner only when timestamps were asked for
    by_config = {r["config"]: r for r in report["rows"]}
    assert by_config["vad"]["served_vad_ms"] > 0 and by_config["whole"]["served_vad_ms"] == 0
    assert by_config["vad_ts"]["served_align_ms"] > 0 and by_config["vad"]["served_align_ms"] == 0
    assert report["vad_vs_silero"]["segments"] > 0
    # the turn latency of our stream and of the Realtime protocol, side by side
    assert {r["protocol"] for r in report["turn_latency"]} == {"stream", "realtime"}
    assert all(r["turns"] > 0 and r["p50_ms"] > 0 for r in report["turn_latency"])
    # two models at once, and confidence on vs off
    assert report["two_models"]["single_model_x"] > 0 and report["two_models"]["mixed_two_models_x"] > 0
    assert report["two_models"]["second_model_load_s"] > 0
    assert report["confidence_cost"]["on_ms"] > 0 and report["confidence_cost"]["off_ms"] > 0
    # concurrent live streams with 1 and 2 Segmenter replicas, their VAD run on the Segmenters
    assert [r["segmenter_replicas"] for r in report["live_streams"]] == [1, 2]
    assert all(r["throughput_x"] > 0 and r["segmenter_cpu_ms_per_audio_s"] > 0 for r in report["live_streams"])
    assert (tmp_path / "smoke.md").read_text().startswith("# Parakeet serving benchmark")
    assert (tmp_path / "smoke.png").stat().st_size > 1000


def test_the_one_call_gpu_bench_runs_end_to_end_on_the_cpu_with_the_tiny_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.one_call", "--model", "tiny", "--minutes", "0.25",
                             "--concurrency", "1", "2", "--rounds", "1", "--saturation-files", "4",
                             "--batch-sizes", "2", "4", "--out-dir", str(tmp_path), "--name", "one-call",
                             "--work-dir", str(tmp_path / "work")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "one-call.json").read_text())
    assert [(r["audio"], r["config"]) for r in report["in_process"]] == [("0.25min", "vad_ts"), ("0.25min", "whole")]
    for row in report["in_process"]:  # every stage timed; the stages account for the whole request
        stages = [row[f"{s}_ms"] for s in ("decode", "vad", "encoder", "decoder", "align", "host")]
        assert row["encoder_ms"] > 0 and row["decoder_ms"] > 0 and sum(stages) == pytest.approx(row["p50_ms"],
                                                                                              rel=0.25)
    by_config = {r["config"]: r for r in report["in_process"]}
    # no VAD for the whole file (a fraction of a millisecond to make its one segment), real VAD with it on
    assert by_config["whole"]["vad_ms"] < 1 < by_config["vad_ts"]["vad_ms"]
    assert by_config["whole"]["segments"] == 1 < by_config["vad_ts"]["segments"]
    assert [r["batch_size"] for r in report["saturation_in_process"]] == [2, 4]
    assert all(r["throughput_x"] > 0 for r in report["saturation_in_process"])
    served = report["served"]  # Ray is installed here: the graph's rows too
    assert {(r["config"], r["concurrency"]) for r in served["rows"]} == {
        (c, n) for c in ("vad_ts", "whole") for n in (1, 2)}
    assert served["saturation"]["throughput_x"] > 0 and not report["skipped"]
    # 0.25-minute clips: no 1- or 15-minute row to hold against those targets, only the saturation one
    assert set(report["targets"]) == {"saturation at batch 4 (x real time)"}
    assert report["emission_on_speech"]["tokens_per_s"] > 0
    assert (tmp_path / "one-call.md").read_text().startswith("# One-call bench")
    assert (tmp_path / "one-call.png").stat().st_size > 1000
