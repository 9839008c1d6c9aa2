"""Partial windows: what a partial's window rule costs and how good the partials it gives are (no Ray, no server).

    python -m bench.partial_windows                          # the shipped rule and four others (~4 min)
    python -m bench.partial_windows --windows 1,1 0.5,0.5    # partial_context_s,partial_settle_s pairs

The service's partials (``deployments.speech.live.PartialText``) transcribe a window from a left context before
the committed words' end to now (``stream.partial_context_s``), and commit a word once it ended a right context
before the window's end (``stream.partial_settle_s``). Shorter windows
cost the model less per second of a long turn, but give its partials less context. For unbroken turns of 2 / 10 /
29 s (the live-turns bench's partial-cost turns), a partial every second of audio and one whole-turn final, this
runs the digits model in-process and reports, per rule and turn length: the audio the model ran per second of
turn, its model ms per second, the committed words that differ from the final's (a Realtime client's deltas are
committed words: they are never taken back), and the last partial's word errors against the final.

Writes bench/results/<name>.json and .md. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.audio import SAMPLE_RATE, word_errors
from bench.run import RESULTS, model_path, save_report
from bench.turns import unbroken_turns


def sweep_row(recognizer, left_s: float, right_s: float, seconds: float, count: int) -> dict:
    from deployments.speech.live import PartialText

    ran = spent_ms = total = 0.0
    committed = committed_wrong = last_wrong = final_words = 0
    for audio in unbroken_turns(seconds, count):
        started = time.perf_counter()
        final = recognizer.transcribe([audio])[0].text.split()
        spent_ms += (time.perf_counter() - started) * 1000
        ran += len(audio) / SAMPLE_RATE
        total += len(audio) / SAMPLE_RATE
        final_words += len(final)
        text, shown = PartialText(0, left_s, right_s), []
        for position in range(SAMPLE_RATE, len(audio), SAMPLE_RATE):
            begin = text.window(position)
            started = time.perf_counter()
            tokens = recognizer.transcribe([audio[begin:position]])[0]
            spent_ms += (time.perf_counter() - started) * 1000
            ran += (position - begin) / SAMPLE_RATE
            shown = text.text(begin, position, tokens).split()
        committed += len(text.words)
        committed_wrong += word_errors(" ".join(final[:len(text.words)]), " ".join(text.words))
        last_wrong += word_errors(" ".join(final), " ".join(shown))
    return {"left_s": left_s, "right_s": right_s, "turn_s": seconds, "turns": count,
            "audio_run_per_s": round(ran / total, 2), "model_ms_per_s": round(spent_ms / total, 1),
            "committed_words": committed, "committed_differing": committed_wrong,
            "last_partial_errors": last_wrong, "final_words": final_words}


def markdown(report: dict) -> str:
    lines = [f"# {report['name']}", "", f"`{report['command']}` ({report['machine']}, torch threads: "
             f"{report['threads']})", "",
             "| left s | right s | turn s | turns | audio run / s | model ms / s | committed words differing from "
             "the final | last partial's errors vs the final |", "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['left_s']:g} | {r['right_s']:g} | {r['turn_s']:g} | {r['turns']} | {r['audio_run_per_s']} | "
                     f"{r['model_ms_per_s']} | {r['committed_differing']} of {r['committed_words']} | "
                     f"{r['last_partial_errors']} of {r['final_words']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    import os
    import platform
    import sys

    import torch

    from deployments.speech.parakeet import ParakeetRecognizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--name", default="partial-windows-digits-cpu")
    parser.add_argument("--windows", nargs="*", default=["0.5,0.75", "1,1", "0.5,0.5", "0.5,1", "0.25,0.75"],
                        metavar="CONTEXT,SETTLE")
    parser.add_argument("--speech-s", type=float, default=240.0, help="seconds of speech per row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the served Transcriber's default: 1)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recognizer = ParakeetRecognizer.load(model_path(args.model, Path("/tmp/parakeet-bench")), device="cpu")
    recognizer.transcribe([np.zeros(3 * SAMPLE_RATE, np.float32)])  # warm-up
    rows = []
    for pair in args.windows:
        left_s, right_s = (float(v) for v in pair.split(","))
        for seconds in (2, 10, 29):
            rows.append(sweep_row(recognizer, left_s, right_s, seconds, max(2, int(round(args.speech_s / seconds)))))
            print(rows[-1], flush=True)
    report = {"name": args.name, "command": "python -m bench.partial_windows " + " ".join(
        sys.argv[1:] if argv is None else argv), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs", "threads": args.threads, "rows": rows}
    save_report(args.name, report, markdown(report), args.out_dir)
    return report


if __name__ == "__main__":
    main()
