"""The GPU figures in one short call (a lent GPU machine gives minutes, not hours):

    python -m bench.one_call --model full-random            # on the GPU: the targets' table in <= 8 minutes
    python -m bench.one_call --model tiny --minutes 0.25 --concurrency 1 2 --saturation-files 4   # CPU smoke

Builds the model from its config (``full-random``: the real architecture, random weights, its joint biased to
emit tokens at the trained model's rate: ``bench.models.bias_to_speech_rate``), warms up, then measures in order,
each step only while the time budget lasts (what did not fit is listed as skipped):

1. the in-process pipeline (no Ray): 1 and 15 minutes with VAD + timestamps and as one whole file, with the time
   of every stage (decode, VAD on the CPU, encoder, decoder, alignment) and the rest (host work between them);
2. saturation in-process: many concurrent 1-minute files, their segments batched at each batch size;
3. the served Ray graph, where Ray and Serve are installed: the same lengths at concurrency 1 / 4 / 16, and
   saturation through the graph;
GPU utilisation (NVML) and memory beside each. Writes bench/results/<name>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.audio import SAMPLE_RATE, encode, synthetic_speech

RESULTS = Path(__file__).parent / "results"
TARGETS = {"1 min VAD + timestamps p50 (ms)": 150, "15 min VAD + timestamps p50 (ms)": 1500,
           "saturation at batch 4 (x real time)": 5000}
STAGES = ("decode", "vad", "encoder", "decoder", "align", "host")


class Budget:
    """The call's time: each step runs only if it still fits."""

    def __init__(self, seconds: float):
        self.started = time.perf_counter()
        self.seconds = seconds
        self.skipped: list[str] = []

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def allows(self, step: str, needs_s: float = 0.0) -> bool:
        if self.elapsed + needs_s > self.seconds:
            self.skipped.append(step)
            return False
        return True


class StageClock:
    """Wall time inside the recognizer's encoder and decoder (synchronised with the GPU, so the time is the
    stage's own and not the next stage's wait)."""

    def __init__(self, recognizer):
        import torch

        self.seconds = {"encoder": 0.0, "decoder": 0.0}
        self._cuda = recognizer.device.startswith("cuda")
        self._sync = torch.cuda.synchronize if self._cuda else (lambda: None)
        model = recognizer.model
        model.encoder.forward = self._timed("encoder", model.encoder.forward)
        model.decoding.rnnt_decoder_predictions_tensor = self._timed(
            "decoder", model.decoding.rnnt_decoder_predictions_tensor)

    def _timed(self, stage: str, call):
        def timed(*args, **kwargs):
            self._sync()
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self._sync()
                self.seconds[stage] += time.perf_counter() - started
        return timed

    def take(self) -> dict[str, float]:
        taken, self.seconds = self.seconds, {"encoder": 0.0, "decoder": 0.0}
        return taken


def in_process(raw, clock: StageClock, wav: bytes, vad: bool, timestamps: bool) -> dict:
    """One request in this process, with the time of each stage in ms."""
    from deployments.speech.audio import decode

    started = time.perf_counter()
    audio = decode(wav, max_seconds=4 * 3600)
    decoded = time.perf_counter()
    clock.take()
    run = raw.run(audio, vad, timestamps)
    total_ms = (time.perf_counter() - started) * 1000
    model = {stage: seconds * 1000 for stage, seconds in clock.take().items()}
    stages = {"decode": (decoded - started) * 1000, "vad": run["vad_ms"], **model, "align": run["align_ms"]}
    stages["host"] = max(0.0, total_ms - sum(stages.values()))
    return {"total_ms": total_ms, **{f"{k}_ms": v for k, v in stages.items()}, "segments": run["segments"]}


def saturation_in_process(raw, files: list[np.ndarray], batch_sizes: list[int], threads: int) -> list[dict]:
    """Many 1-minute files at once: VAD of all of them (CPU threads), then every segment through the model at each
    batch size. Audio seconds per wall second, and where the time went."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        started = time.perf_counter()
        segments = list(pool.map(raw.detector.segments, files))
        vad_s = time.perf_counter() - started
    pieces = [audio[s.start:s.end] for audio, found in zip(files, segments) for s in found]
    pieces.sort(key=len)  # as the Transcriber's batches are (by length, least padding)
    audio_s = sum(len(f) for f in files) / SAMPLE_RATE
    rows = []
    for size in batch_sizes:
        _warm(raw, size)
        started = time.perf_counter()
        for first in range(0, len(pieces), size):
            raw.recognizer.transcribe(pieces[first:first + size])
        model_s = time.perf_counter() - started
        rows.append({"batch_size": size, "files": len(files), "segments": len(pieces), "audio_s": audio_s,
                     "vad_s": round(vad_s, 3), "model_s": round(model_s, 3),
                     # VAD runs on the CPU beside the GPU in the service: throughput is bound by the slower one
                     "throughput_x": round(audio_s / max(model_s, vad_s), 1),
                     "model_only_x": round(audio_s / model_s, 1)})
    return rows


def _warm(raw, size: int) -> None:
    raw.recognizer.transcribe([np.zeros(SAMPLE_RATE * 10, np.float32)] * size)


def served_rows(path: str, clips: dict, args, budget: Budget, sampler) -> dict:
    """The Ray graph: the lengths at each concurrency (the bench's own measurement), then saturation."""
    from bench.run import CONFIGS, Served, summarise

    served = Served(path, args.max_batch_size, args.batch_ms, {"threads": args.vad_threads}, 1)
    out: dict = {"rows": [], "saturation": None}
    try:
        for name, audio in clips.items():
            wav = encode(audio)
            for key in ("vad_ts", "whole"):
                served.measure(wav, b"", key, 1)  # warm-up
                for concurrency in args.concurrency:
                    if not budget.allows(f"served {name} {key} x{concurrency}"):
                        continue
                    mark = sampler.mark()
                    latencies, wall = [], 0.0
                    for _ in range(args.rounds):
                        got, seconds = served.measure(wav, b"", key, concurrency)
                        latencies += got
                        wall += seconds
                    out["rows"].append({"audio": name, "config": key, "label": CONFIGS[key]["label"],
                                        "concurrency": concurrency, **summarise(latencies),
                                        "throughput_x": round(len(latencies) * len(audio) / SAMPLE_RATE / wall, 1),
                                        "gpu_util": _mean(sampler.gpu_util[mark:])})
        if budget.allows("served saturation"):
            wav = encode(synthetic_speech(60, seed=60))
            mark = sampler.mark()
            latencies, wall = served.measure(wav, b"", "vad_ts", args.saturation_files)
            out["saturation"] = {"files": args.saturation_files, "throughput_x": round(
                args.saturation_files * 60 / wall, 1), "p50_ms": round(statistics.median(latencies), 1),
                "gpu_util": _mean(sampler.gpu_util[mark:])}
        out["transcriber"] = served.stats()
    finally:
        served.shutdown()
    return out


def _mean(values: list[float]) -> float | None:
    return round(statistics.mean(values), 1) if values else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="full-random", help="full-random | tiny | digits | <.nemo path>")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 15])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=3, help="repeats of each in-process and served measurement")
    parser.add_argument("--saturation-files", type=int, default=64, help="concurrent 1-minute files")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--max-batch-size", type=int, default=4, help="the served Transcriber's batch (design: 4)")
    parser.add_argument("--batch-ms", type=float, default=15)
    parser.add_argument("--vad-threads", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)))
    parser.add_argument("--budget-s", type=float, default=450, help="stop starting steps after this (8 min call)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-serve", action="store_true", help="in-process only (also when Ray is not installed)")
    parser.add_argument("--name", default=None)
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument("--work-dir", default="/tmp/parakeet-bench")
    args = parser.parse_args(argv)

    import torch

    from bench.run import RawPipeline, ResourceSampler, model_path
    from deployments.speech.parakeet import resolve_device

    budget = Budget(args.budget_s)
    device = resolve_device(args.device)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    path = model_path(args.model, work)
    built_s = budget.elapsed
    raw = RawPipeline(path, device, args.max_batch_size, {"threads": args.vad_threads}, threads=os.cpu_count() or 1)
    clock = StageClock(raw.recognizer)
    sampler = ResourceSampler()
    sampler.start()
    from bench.models import measure_emission

    emission = measure_emission(raw.recognizer, synthetic_speech(60, seed=7)).model_dump()
    clips = {f"{m:g}min": synthetic_speech(m * 60, seed=int(m * 60)) for m in args.minutes}
    report = {"name": args.name or f"one-call-{Path(args.model).stem}-{device}", "model": args.model,
              "device": device, "machine": _machine(device), "python": sys.version.split()[0],
              "torch": torch.__version__, "dtype": str(raw.recognizer.dtype), "model_ready_s": round(built_s, 1),
              "emission_on_speech": emission, "in_process": [], "saturation_in_process": [], "served": None}
    for name, audio in clips.items():
        wav = encode(audio)
        for key, vad, timestamps in (("vad_ts", True, True), ("whole", False, False)):
            if not budget.allows(f"in-process {name} {key}"):
                continue
            in_process(raw, clock, wav, vad, timestamps)  # warm-up (shapes of this length)
            mark = sampler.mark()
            runs = [in_process(raw, clock, wav, vad, timestamps) for _ in range(args.rounds)]
            report["in_process"].append({
                "audio": name, "config": key, "p50_ms": round(statistics.median(r["total_ms"] for r in runs), 1),
                **{f"{s}_ms": round(statistics.median(r[f"{s}_ms"] for r in runs), 1) for s in STAGES},
                "segments": runs[0]["segments"], "gpu_util": _mean(sampler.gpu_util[mark:])})
    if budget.allows("in-process saturation"):
        files = [synthetic_speech(60, seed=100 + i) for i in range(args.saturation_files)]
        mark = sampler.mark()
        report["saturation_in_process"] = saturation_in_process(raw, files, args.batch_sizes, args.vad_threads)
        report["saturation_gpu_util"] = _mean(sampler.gpu_util[mark:])
    if device.startswith("cuda"):
        report["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    serve_installed = all(importlib.util.find_spec(m) for m in ("ray", "fastapi"))
    if args.no_serve or not serve_installed:
        report["served_skipped"] = "--no-serve" if args.no_serve else "Ray Serve is not installed here"
    else:
        del raw  # the served Transcriber loads its own copy
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
        report["served"] = served_rows(path, clips, args, budget, sampler)
    sampler.stop()
    report["skipped"] = budget.skipped
    report["elapsed_s"] = round(budget.elapsed, 1)
    report["targets"] = targets(report)
    write(report, Path(args.out_dir))
    print(markdown(report))
    return report


def _machine(device: str) -> str:
    name = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs"
    if device.startswith("cuda"):
        import torch

        name += f", {torch.cuda.get_device_name(0)}"
    return name


def targets(report: dict) -> dict:
    """Each target beside what this run measured (in-process and served), and which stage holds it back."""
    def in_process_row(audio: str) -> dict | None:
        return next((r for r in report["in_process"] if r["audio"] == audio and r["config"] == "vad_ts"), None)

    def served_p50(audio: str) -> float | None:
        rows = (report.get("served") or {}).get("rows", [])
        found = next((r for r in rows if r["audio"] == audio and r["config"] == "vad_ts" and r["concurrency"] == 1),
                     None)
        return found["p50_ms"] if found else None

    out = {}
    for audio, label in (("1min", "1 min VAD + timestamps p50 (ms)"), ("15min", "15 min VAD + timestamps p50 (ms)")):
        row = in_process_row(audio)
        if row:
            slowest = max(STAGES, key=lambda s: row[f"{s}_ms"])
            out[label] = {"target": TARGETS[label], "in_process": row["p50_ms"], "served": served_p50(audio),
                          "largest_stage": f"{slowest} {row[f'{slowest}_ms']} ms"}
    saturation = report["saturation_in_process"]
    if saturation:
        at_four = next((r for r in saturation if r["batch_size"] == 4), None)
        best = max(saturation, key=lambda r: r["throughput_x"])
        out["saturation at batch 4 (x real time)"] = {
            "target": TARGETS["saturation at batch 4 (x real time)"],
            "in_process": at_four["throughput_x"] if at_four else None,
            "best": f"{best['throughput_x']} at batch {best['batch_size']}",
            "served": ((report.get("served") or {}).get("saturation") or {}).get("throughput_x")}
    return out


def markdown(report: dict) -> str:
    lines = [f"# One-call bench: {report['name']}", "",
             f"Machine: {report['machine']}. Model: {report['model']} ({report['dtype']}), Python {report['python']}, "
             f"torch {report['torch']}. Ran {report['elapsed_s']} s (model ready after {report['model_ready_s']} s).",
             "", f"Decoder emission on speech: {report['emission_on_speech']}", "",
             "| target | goal | in-process | served (Ray graph) | notes |", "|---|---|---|---|---|"]
    for label, row in report["targets"].items():
        lines.append(f"| {label} | {row['target']} | {row['in_process']} | {row.get('served') or '-'} | "
                     f"{row.get('largest_stage') or row.get('best', '')} |")
    lines += ["", "In-process, per stage (ms, p50):", "",
              "| audio | config | total | " + " | ".join(STAGES) + " | segments | GPU util % |",
              "|---|---|---|" + "---|" * len(STAGES) + "---|---|"]
    for r in report["in_process"]:
        lines.append(f"| {r['audio']} | {r['config']} | {r['p50_ms']} | "
                     + " | ".join(str(r[f"{s}_ms"]) for s in STAGES) + f" | {r['segments']} | {r['gpu_util'] or '-'} |")
    if report["saturation_in_process"]:
        lines += ["", "Saturation in-process (concurrent 1-minute files):", "",
                  "| batch | files | segments | VAD s | model s | x real time | model only x |", "|---|---|---|---|---|---|---|"]
        for r in report["saturation_in_process"]:
            lines.append(f"| {r['batch_size']} | {r['files']} | {r['segments']} | {r['vad_s']} | {r['model_s']} | "
                         f"{r['throughput_x']} | {r['model_only_x']} |")
    served = report.get("served")
    if served:
        lines += ["", "Served through the Ray graph:", "", "| audio | config | concurrency | p50 ms | p95 ms | "
                  "x real time | GPU util % |", "|---|---|---|---|---|---|---|"]
        for r in served["rows"]:
            lines.append(f"| {r['audio']} | {r['label']} | {r['concurrency']} | {r['p50_ms']} | {r['p95_ms']} | "
                         f"{r['throughput_x']} | {r['gpu_util'] or '-'} |")
        lines += ["", f"Served saturation: {served.get('saturation')}"]
    else:
        lines += ["", f"Served rows: skipped ({report.get('served_skipped')})"]
    lines += ["", f"CUDA max allocated (MB): {report.get('cuda_max_allocated_mb', '-')}",
              f"Skipped for the time budget: {report['skipped'] or 'nothing'}", ""]
    return "\n".join(lines)


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{report['name']}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{report['name']}.md").write_text(markdown(report))
    plot(report, out / f"{report['name']}.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (stages, saturation) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = report["in_process"]
    bottom = np.zeros(len(rows))
    for stage in STAGES:
        values = np.array([r[f"{stage}_ms"] for r in rows])
        stages.bar([f"{r['audio']}\n{r['config']}" for r in rows], values, bottom=bottom, label=stage)
        bottom += values
    stages.set_ylabel("ms (in-process, p50)")
    stages.set_yscale("symlog")
    stages.set_title("where the time goes")
    stages.legend(fontsize=7)
    sat = report["saturation_in_process"]
    if sat:
        saturation.plot([r["batch_size"] for r in sat], [r["throughput_x"] for r in sat], marker="o")
        saturation.axhline(TARGETS["saturation at batch 4 (x real time)"], linestyle=":", color="grey")
        saturation.set_xscale("log", base=2)
    saturation.set_xlabel("batch size")
    saturation.set_ylabel("x real time (1-minute files)")
    saturation.set_title("saturation throughput")
    fig.suptitle(report["name"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
