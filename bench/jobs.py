"""Transcription jobs against the synchronous path, served (2-core CPU, the digits model by default).

    python -m bench.jobs                 # a 1-hour file, 1-minute requests (~15 min on 2 cores)
    python -m bench.jobs --minutes 10    # quicker

Two rows, each a ratio measured in this one run:
- wall: the long file as a job (submit -> completed, polled every 0.2 s) over the same file sent synchronously
  (verbose_json with words: a job times its words too), sent in turn ``--repeats`` times (sync, job, sync, job...):
  the median of each over the median of the other (one synchronous hour varied 46.5-52.4 s between runs, more than
  the difference measured). Target <= 1.05.
- interference: 1-minute synchronous requests sent one at a time while a job of the long file runs, p50 over the
  p50 of the same requests on the idle service. Target <= 1.3.

Writes bench/results/jobs-<model>-cpu.json and .md. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.audio import encode, synthetic_speech
from bench.run import Served, model_path, save_report

JOBS = "/v1/audio/transcriptions/jobs"
VERBOSE = {"response_format": "verbose_json", "timestamp_granularities[]": "word"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--minutes", type=float, default=60, help="the long file")
    parser.add_argument("--short-s", type=float, default=60, help="the synchronous requests")
    parser.add_argument("--idle-requests", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="synchronous / job pairs of the long file")
    parser.add_argument("--segments-per-model-call", type=int, default=None,
                        help="jobs.segments_per_model_call (default: the shipped setting)")
    parser.add_argument("--name", default=None, help="report name (default jobs-<model>-cpu)")
    args = parser.parse_args(argv)
    import httpx

    long_wav = encode(synthetic_speech(args.minutes * 60, seed=21))
    shorts = [encode(synthetic_speech(args.short_s, seed=100 + i)) for i in range(4)]
    storage = tempfile.mkdtemp(prefix="parakeet-bench-jobs-")
    served = Served(model_path(args.model, Path("/tmp/parakeet-bench")), 4, 15, {})
    per_call = {} if args.segments_per_model_call is None else {
        "segments_per_model_call": args.segments_per_model_call}
    served.deploy(jobs={"storage": storage, "poll_s": 0.2, **per_call})
    client = httpx.Client(base_url=served.url, timeout=7200)

    def sync(wav: bytes, fields: dict) -> float:
        started = time.perf_counter()
        client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data=fields).raise_for_status()
        return time.perf_counter() - started

    def job(wav: bytes, while_running=None) -> float:
        started = time.perf_counter()
        response = client.post(JOBS, files={"file": ("a.wav", wav)}, data=VERBOSE)
        response.raise_for_status()
        url = f"{JOBS}/{response.json()['id']}"
        while (status := client.get(url).json()["status"]) not in ("completed", "failed", "cancelled"):
            if while_running is not None:
                while_running()
            else:
                time.sleep(0.2)
        assert status == "completed", client.get(url).json()
        return time.perf_counter() - started

    try:
        sync(shorts[0], VERBOSE)  # warm-up
        pairs = [(sync(long_wav, VERBOSE), job(long_wav)) for _ in range(args.repeats)]
        sync_s, job_s = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        idle = [sync(shorts[i % len(shorts)], {}) for i in range(args.idle_requests)]
        busy: list[float] = []
        job(long_wav, while_running=lambda: busy.append(sync(shorts[len(busy) % len(shorts)], {})))
    finally:
        served.shutdown()
    idle_p50, busy_p50 = statistics.median(idle), statistics.median(busy)
    report = {"command": "python -m bench.jobs " + " ".join(sys.argv[1:] if argv is None else argv),
              "model": args.model, "long_file_s": args.minutes * 60, "short_s": args.short_s,
              "sync_ms": round(sync_s * 1000), "job_ms": round(job_s * 1000),
              "pairs_ms": [[round(a * 1000), round(b * 1000)] for a, b in pairs],
              "job_over_sync": round(job_s / sync_s, 3), "wall_target": "<= 1.05",
              "short_idle_p50_ms": round(idle_p50 * 1000), "short_during_job_p50_ms": round(busy_p50 * 1000),
              "short_requests_during_job": len(busy), "during_job_over_idle": round(busy_p50 / idle_p50, 3),
              "interference_target": "<= 1.3"}
    name = args.name or f"jobs-{Path(args.model).stem}-cpu"
    save_report(name, report,
        f"# Jobs: a {args.minutes:g}-minute file, {args.short_s:g}-second synchronous requests\n\n"
        f"`{report['command']}`\n\n| row | measured | ratio | target |\n|---|---|---|---|\n"
        f"| the long file as a job / sent synchronously (verbose_json; medians of {len(pairs)} each, in turn) | "
        f"{report['job_ms']} / {report['sync_ms']} ms "
        f"| {report['job_over_sync']} | <= 1.05 |\n"
        f"| short requests p50 while the job runs / idle ({len(busy)} / {len(idle)} requests) | "
        f"{report['short_during_job_p50_ms']} / {report['short_idle_p50_ms']} ms | {report['during_job_over_idle']} "
        f"| <= 1.3 |\n")
    return report


if __name__ == "__main__":
    main()
