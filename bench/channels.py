"""Multichannel cost: a stereo file with speech on both channels against one of its channels alone, served.

    python -m bench.channels                    # digits model, 3 minutes, 3 rounds (~3 min on 2 cores)

Each round sends the stereo file with multichannel=true and its first channel as a mono file (interleaved, after a
warm-up of each); the row is the median of each and their ratio. Writes bench/results/multichannel-<model>-cpu.json
and .md. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.audio import SAMPLE_RATE, encode, synthetic_speech
from bench.run import Served, model_path, save_report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import httpx

    left, right = (synthetic_speech(args.minutes * 60, seed=seed) for seed in (11, 12))
    stereo, mono = encode(np.stack([left, right], axis=1)), encode(left)
    served = Served(model_path(args.model, Path("/tmp/parakeet-bench")), 4, 15, {})
    timings: dict[str, list[float]] = {"stereo": [], "one channel": []}
    try:
        for round_ in range(args.rounds + 1):  # the first round warms up
            for name, wav, fields in (("stereo", stereo, {"multichannel": "true"}), ("one channel", mono, {})):
                started = time.perf_counter()
                httpx.post(served.url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                           data={"response_format": "verbose_json", "timestamp_granularities[]": "word", **fields},
                           timeout=3600).raise_for_status()
                if round_:
                    timings[name].append(time.perf_counter() - started)
    finally:
        served.shutdown()
    stereo_ms, mono_ms = (statistics.median(timings[k]) * 1000 for k in ("stereo", "one channel"))
    report = {"command": "python -m bench.channels " + " ".join(sys.argv[1:] if argv is None else argv), "model": args.model,
              "minutes": args.minutes, "rounds": args.rounds, "stereo_ms": round(stereo_ms),
              "one_channel_ms": round(mono_ms), "stereo_over_one_channel": round(stereo_ms / mono_ms, 3),
              "target": "<= 2.1", "audio_s": len(left) / SAMPLE_RATE}
    name = f"multichannel-{Path(args.model).stem}-cpu"
    save_report(name, report,
        f"# Multichannel: {args.minutes:g}-minute stereo file, speech on both channels\n\n`{report['command']}`\n\n"
        "| request | p50 ms |\n|---|---|\n"
        f"| stereo, multichannel=true (verbose_json, words) | {report['stereo_ms']} |\n"
        f"| its first channel alone, mono | {report['one_channel_ms']} |\n\n"
        f"Ratio: {report['stereo_over_one_channel']} (target <= 2.1).\n")
    return report


if __name__ == "__main__":
    main()
