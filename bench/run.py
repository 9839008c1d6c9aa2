"""Reproduce the old server's latency table, served vs the raw in-process model, on one machine in one run.

    python -m bench.run                       # tiny model, 1/3/15 min, concurrency 1/4/16 (CPU or GPU)
    python -m bench.run --model full-random   # the full Parakeet-TDT-0.6B-v2 architecture, random weights
    python -m bench.run --model digits --minutes 1 3 --concurrency 1 4
    python -m bench.run --audio talk.mp3      # your own file(s) instead of synthetic speech
    python -m bench.run --quick               # smoke run: ~20 s of audio, concurrency 1 (< 2 min on 2 cores)

Writes bench/results/<name>.json, .md (the old server's layout, our numbers beside its numbers) and .png.
Every ratio compares numbers measured in this run on this machine; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.audio import SAMPLE_RATE, encode, load_user_audio, synthetic_speech
from deployments import front_door
from deployments.front_door import free_port

RESULTS = Path(__file__).parent / "results"


def save_report(name: str, report: dict, markdown: str, out_dir: Path | str = RESULTS) -> None:
    """``<out_dir>/<name>.json`` (the figures) and ``.md`` (the table), and the figures on stdout."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(json.dumps(report, indent=2))


CONFIGS = {
    "vad_ts": {"label": "VAD + timestamps", "vad": True, "timestamps": True},
    "vad": {"label": "VAD, no timestamps", "vad": True, "timestamps": False},
    "whole": {"label": "whole file, no timestamps", "vad": False, "timestamps": False},
    "whole_ts": {"label": "whole file + timestamps", "vad": False, "timestamps": True},
    "stream": {"label": "streaming, 1024-byte frames", "vad": True, "timestamps": False},
    "stream_ts": {"label": "streaming + timestamps, 1024-byte frames", "vad": True, "timestamps": True},
}
STREAMED = ("stream", "stream_ts")
# The replaced server's published averages (ms) for 1 / 3 / 15 minutes of audio.
OLD_SERVER_MS = {"vad_ts": [6439, 10200, 41633], "vad": [1410, 3624, 17835], "whole": [121, 308, 2774],
                 "stream": [3243, 8855, 34824]}
OLD_MINUTES = [1, 3, 15]


# ---------------------------------------------------------------------------------------------- models

def second_copy(path: str, work: Path) -> str:
    """The same checkpoint under another file name: a second model with exactly the first one's compute (two
    random-weight models of one size can decode at very different cost, which is not what is measured here)."""
    import shutil

    copy = work / f"second-{Path(path).name}"
    if not copy.is_file():
        shutil.copyfile(path, copy)
    return str(copy)


def model_path(name: str, work: Path) -> str:
    from bench.models import build_random_nemo

    if name == "tiny":
        return str(build_random_nemo("tiny", work / "tiny.nemo"))
    if name == "full-random":  # deterministic (fixed seed), so a copy left in the work dir is reused
        # the joint biased to emit tokens at the trained model's rate (a random joint emits on every frame)
        cached = work / "full-random-speech-rate.nemo"
        return str(cached if cached.is_file() else build_random_nemo("full", cached, speech_rate=True))
    if name == "digits":
        return str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "digits.nemo")
    return name  # a .nemo path or an HF id


# ---------------------------------------------------------------------------------------------- raw reference

class RawPipeline:
    """The same work with no Ray and no HTTP: VAD, the model in batches, alignment, all in this process."""

    def __init__(self, path: str, device: str, max_batch_size: int, vad: dict, threads: int = 1):
        import torch

        from deployments.speech.parakeet import ParakeetRecognizer
        from deployments.speech.settings import VadSettings
        from deployments.speech.vad import SpeechDetector

        self.recognizer = ParakeetRecognizer.load(path, device=device)
        self.detector = SpeechDetector(VadSettings(**vad))
        # as many torch threads as the served Transcriber gets (importing silero-vad set 1 for the process)
        torch.set_num_threads(threads)
        self.max_batch_size = max_batch_size
        self.recognizer.transcribe([np.zeros(SAMPLE_RATE, np.float32)] * max_batch_size)  # warm-up

    def run(self, audio: np.ndarray, vad: bool, timestamps: bool) -> dict:
        from deployments.speech.schemas import SpeechSegment
        from deployments.speech.timestamps import align

        started = time.perf_counter()
        segments = self.detector.segments(audio) if vad else [SpeechSegment(start=0, end=len(audio))]
        vad_done = time.perf_counter()
        tokens = []
        for first in range(0, len(segments), self.max_batch_size):
            batch = segments[first:first + self.max_batch_size]
            tokens += self.recognizer.transcribe([audio[s.start:s.end] for s in batch])
        asr_done = time.perf_counter()
        if timestamps:
            align([(t, s.start / SAMPLE_RATE, s.end / SAMPLE_RATE) for t, s in zip(tokens, segments)],
                  len(audio) / SAMPLE_RATE)
        finished = time.perf_counter()
        return {"total_ms": (finished - started) * 1000, "vad_ms": (vad_done - started) * 1000,
                "asr_ms": (asr_done - vad_done) * 1000, "align_ms": (finished - asr_done) * 1000,
                "segments": len(segments)}


def vad_versus_silero(audio: np.ndarray) -> dict:
    """Our VAD path against silero's reference ``get_speech_timestamps`` loop on the same audio."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    from deployments.speech.settings import VadSettings
    from deployments.speech.vad import SpeechDetector

    settings = VadSettings(merge_up_to_s=0)
    detector = SpeechDetector(settings)
    started = time.perf_counter()
    ours = detector.segments(audio)
    ours_s = time.perf_counter() - started
    model = load_silero_vad()
    started = time.perf_counter()
    reference = get_speech_timestamps(torch.from_numpy(audio), model, min_silence_duration_ms=30,
                                      speech_pad_ms=120, max_speech_duration_s=settings.max_segment_s,
                                      min_speech_duration_ms=settings.min_speech_duration_ms)
    reference_s = time.perf_counter() - started
    same = [(s.start, s.end) for s in ours] == [(r["start"], r["end"]) for r in reference]
    return {"audio_s": len(audio) / SAMPLE_RATE, "ours_s": round(ours_s, 3), "silero_loop_s": round(reference_s, 3),
            "speedup": round(reference_s / max(ours_s, 1e-9), 2), "segments_match": same,
            "segments": len(ours)}


# ---------------------------------------------------------------------------------------------- served

class ResourceSampler(threading.Thread):
    """Peak RSS of each Serve replica process (and GPU utilisation through NVML), sampled every 0.25 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_rss_mb: dict[str, float] = {}
        self.gpu_util: list[float] = []
        self._stop = threading.Event()
        self._marks: list[int] = []

    def run(self) -> None:
        import psutil

        nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            nvml = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no GPU
            nvml = None
        while not self._stop.is_set():
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                try:
                    title = " ".join(proc.info["cmdline"] or [])
                    if "ServeReplica" in title and proc.info["memory_info"]:
                        # the process title also names the method being run: keep the deployment's name
                        name = title.split("ServeReplica:")[1].split()[0].split(":")[-1].split(".")[0]
                        rss = proc.info["memory_info"].rss / 2**20
                        self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), rss)
                except (psutil.Error, IndexError):
                    continue
            if nvml is not None:
                import pynvml

                self.gpu_util.append(pynvml.nvmlDeviceGetUtilizationRates(nvml).gpu)
            time.sleep(0.25)

    def mark(self) -> int:
        return len(self.gpu_util)

    def stop(self) -> None:
        self._stop.set()


class Served:
    def __init__(self, path: str, max_batch_size: int, batch_ms: float, vad: dict, transcriber_cpus: int = 1,
                 ingress: str | None = None):
        import ray
        from ray import serve

        # what make serve runs unless ``ingress`` (or $PARAKEET_INGRESS) says otherwise
        self.front_door, self._haproxy_dir = front_door.prepare(ingress)
        ray.init(address="local", num_cpus=max(8, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                     p for p in [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")] if p)}})
        self.port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.args = {"model": path, "vad": vad, "transcriber_cpus": transcriber_cpus}
        self.batching = {"Transcriber": {"user_config": {"max_batch_size": max_batch_size, "batch_ms": batch_ms}}}
        self.deploy()
        self.url = f"http://127.0.0.1:{self.port}"
        self.handles = {name: serve.get_deployment_handle(name, app_name="parakeet")
                        for name in ("Transcriber", "Segmenter", "Aligner")}

    def deploy(self, segmenter_replicas: int | None = None, **args) -> None:
        """(Re)deploy the app with serve_config.yaml's options (a fixed Segmenter replica count if given; ``args``
        on top of the run's)."""
        from ray import serve

        from deployments.app import compose_app, merged_options

        options = self.batching
        if segmenter_replicas:
            fixed = {"min_replicas": segmenter_replicas, "max_replicas": segmenter_replicas}
            options = merged_options(options, {"Segmenter": {"autoscaling_config": fixed}})
        serve.run(compose_app({**self.args, **args}, options), name="parakeet", route_prefix="/")

    def stats(self) -> dict:
        """Counters of the (single) replica of each deployment: batches, items, seconds spent in each stage."""
        merged: dict = {}
        for handle in self.handles.values():
            merged.update(handle.stats.remote().result())
        return merged

    async def one(self, client, wav: bytes, config: dict, model: str | None = None) -> float:
        started = time.perf_counter()
        data = {"vad": str(config["vad"]).lower(), **({"model": model} if model else {})}
        if config["timestamps"]:
            data.update({"response_format": "verbose_json", "timestamp_granularities[]": "word"})
        response = await client.post(self.url + "/v1/audio/transcriptions", data=data,
                                     files={"file": ("a.wav", wav, "audio/wav")})
        response.raise_for_status()
        return (time.perf_counter() - started) * 1000

    async def one_stream(self, pcm: bytes, timestamps: bool = False) -> float:
        from deployments.stream_client import stream_pcm

        started = time.perf_counter()
        # as a user gets it: partials on (the default)
        outcome = await stream_pcm(self.url.replace("http", "ws") + "/v1/audio/stream", pcm,
                                   {"sample_rate": SAMPLE_RATE, "timestamps": timestamps})
        errors = [e for e in outcome.events if e["type"] == "error"]
        if errors or outcome.events[-1:] != [{"type": "done"}]:
            raise RuntimeError(f"stream failed: {errors or outcome.events[-1:]}")
        return (time.perf_counter() - started) * 1000

    def measure(self, wav: bytes, pcm: bytes, config_key: str, concurrency: int) -> tuple[list[float], float]:
        """One round: ``concurrency`` requests at once; their latencies and the round's wall time (s)."""
        import httpx

        config = CONFIGS[config_key]

        async def go():
            async with httpx.AsyncClient(timeout=3600) as client:
                started = time.perf_counter()
                calls = [self.one_stream(pcm, config["timestamps"]) if config_key in STREAMED
                         else self.one(client, wav, config) for _ in range(concurrency)]
                latencies = await asyncio.gather(*calls)
                return list(latencies), time.perf_counter() - started

        return asyncio.run(go())

    def shutdown(self) -> None:
        import shutil

        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        if self._haproxy_dir:
            shutil.rmtree(self._haproxy_dir, ignore_errors=True)


def serving_cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds of this node's serving processes so far: each deployment's replicas summed under
    its name, the proxy (or HAProxy and its manager actor), the controller, and this process (``client``)."""
    import psutil

    found: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            command = " ".join(proc.info["cmdline"] or [])
            if proc.pid == os.getpid():
                name = "client"
            # (Ray retitles a process with the method it runs, "Segmenter.handle_request_with_rejection": the name
            # stops at the dot, or a row's before and after would land in two names)
            elif "ray::ServeReplica:" in command:
                name = command.split("ray::ServeReplica:", 1)[1].split()[0].rsplit(":", 1)[-1].split(".")[0]
            elif any(f"ray::{actor}" in command for actor in ("ProxyActor", "HAProxyManager", "ServeController")):
                name = command.split("ray::", 1)[1].split()[0].split(".")[0]
            elif os.path.basename(command.split(" ", 1)[0]) == "haproxy":
                name = "haproxy"
            else:
                continue
            times = proc.cpu_times()
            found[name] = found.get(name, 0.0) + times.user + times.system
        except psutil.Error:
            continue
    return found


def replica_cpu_seconds(deployment: str) -> float:
    """User + system CPU time of every live replica process of ``deployment``."""
    return serving_cpu_seconds().get(deployment, 0.0)


def every_replicas_stats(app_name: str, deployment: str) -> dict[str, dict]:
    """``stats()`` of each running replica of ``deployment``, by replica id (the handle routes each call to one
    replica: called until every running replica has answered)."""
    from ray import serve

    running = serve.status().applications[app_name].deployments[deployment].replica_states.get("RUNNING", 1)
    handle = serve.get_deployment_handle(deployment, app_name=app_name)
    answers: dict[str, dict] = {}
    for _ in range(50 * running):
        stats = handle.stats.remote().result()
        answers[stats["replica"]] = stats
        if len(answers) >= running:
            break
    return answers


class NodeLoad:
    """What a stretch of a bench cost this node: the share of its CPU time busy, each serving process's CPU seconds
    (replicas summed by deployment, the proxy, the controller, this client) and the live VAD steps per Segmenter
    call (every replica)."""

    def __init__(self, app_name: str = "parakeet"):
        import psutil

        self.app_name = app_name
        self.node = psutil.cpu_times()
        self.processes = serving_cpu_seconds()
        self.steps = self._steps()
        self.started = time.perf_counter()

    def summary(self) -> dict:
        import psutil

        wall = time.perf_counter() - self.started
        idle = psutil.cpu_times().idle - self.node.idle
        processes = serving_cpu_seconds()
        steps, calls = (a - b for a, b in zip(self._steps(), self.steps))
        return {"wall_s": round(wall, 1), "node_cpu_busy": round(1 - idle / wall / (os.cpu_count() or 1), 2),
                "cpu_s": {name: round(seconds - self.processes.get(name, 0.0), 1)
                          for name, seconds in sorted(processes.items())
                          if seconds - self.processes.get(name, 0.0) >= 0.05},
                "vad_steps_per_segmenter_call": round(steps / max(1, calls), 2)}

    def _steps(self) -> tuple[int, int]:
        replicas = every_replicas_stats(self.app_name, "Segmenter").values()
        return sum(r["live_steps"] for r in replicas), sum(r["live_batches"] for r in replicas)


def live_streams(served: Served, count: int, seconds: float) -> list[dict]:
    """``count`` concurrent live streams (1024-byte frames, as fast as possible) with 1 and then 2 Segmenter
    replicas: wall time, throughput, and CPU seconds per audio second on the Ingress and the Segmenters."""
    from deployments.speech.audio import float_to_pcm16

    pcms = [float_to_pcm16(synthetic_speech(seconds, seed=1000 + i)) for i in range(count)]

    async def together() -> None:
        await asyncio.gather(*[served.one_stream(pcm) for pcm in pcms])

    rows = []
    for replicas in (1, 2):
        served.deploy(segmenter_replicas=replicas)
        asyncio.run(together())  # warm-up
        cpu = {name: replica_cpu_seconds(name) for name in ("Ingress", "Segmenter")}
        before = served.handles["Segmenter"].stats.remote().result()
        started = time.perf_counter()
        asyncio.run(together())
        wall = time.perf_counter() - started
        after = served.handles["Segmenter"].stats.remote().result()  # one replica's counters (of the two)
        audio_s = count * seconds
        rows.append({"streams": count, "seconds_each": seconds, "segmenter_replicas": replicas,
                     "wall_s": round(wall, 2), "throughput_x": round(audio_s / wall, 1),
                     **{f"{name.lower()}_cpu_ms_per_audio_s": round((replica_cpu_seconds(name) - cpu[name]) * 1000
                                                                    / audio_s, 3) for name in cpu},
                     "steps_per_batch_one_replica": round((after["live_steps"] - before["live_steps"])
                                                          / max(1, after["live_batches"] - before["live_batches"]),
                                                          2)})
        print(f"live streams: {rows[-1]}", flush=True)
    return rows


def turn_latency(served: Served, session_counts: list[int], seconds: float) -> list[dict]:
    """Audio sent at real-time pace (100 ms chunks); for every utterance, the time from the end of its audio to its
    final transcript: ``final`` on our stream, ``...transcription.completed`` on the Realtime protocol (whose audio
    goes in at OpenAI's default 24 kHz). Both end an utterance on the same pause rule, so the difference is what
    the protocol adds."""
    import soxr

    from deployments.speech.audio import float_to_pcm16
    from deployments.stream_client import realtime_pcm, stream_pcm

    base = served.url.replace("http", "ws")

    async def one(protocol: str, audio: np.ndarray) -> list[float]:
        started = time.perf_counter()
        arrivals: list[tuple[dict, float]] = []

        def seen(event: dict) -> None:
            arrivals.append((event, time.perf_counter() - started))

        if protocol == "stream":
            await stream_pcm(base + "/v1/audio/stream", float_to_pcm16(audio), {"sample_rate": SAMPLE_RATE},
                             frame_bytes=SAMPLE_RATE * 2 // 10, realtime=True, on_event=seen)
            return [at - e["end"] for e, at in arrivals if e["type"] == "final"]
        at_24k = soxr.resample(audio, SAMPLE_RATE, 24000).astype(np.float32)
        await realtime_pcm(base + "/v1/realtime", float_to_pcm16(at_24k), 24000, on_event=seen)
        ends = {e["item_id"]: e["audio_end_ms"] / 1000 for e, _ in arrivals
                if e["type"] == "input_audio_buffer.speech_stopped"}
        return [at - ends[e["item_id"]] for e, at in arrivals
                if e["type"] == "conversation.item.input_audio_transcription.completed" and e["item_id"] in ends]

    rows = []
    for count in session_counts:
        audios = [synthetic_speech(seconds, seed=2000 + i) for i in range(count)]
        for protocol in ("stream", "realtime"):
            async def everyone() -> list[list[float]]:
                return await asyncio.gather(*[one(protocol, audio) for audio in audios])

            latencies = [value * 1000 for per_session in asyncio.run(everyone()) for value in per_session]
            rows.append({"protocol": protocol, "sessions": count, "turns": len(latencies),
                         **{k: v for k, v in summarise(latencies).items() if k in ("p50_ms", "p95_ms")}})
            print(f"turn latency: {rows[-1]}", flush=True)
    return rows


def confidence_cost(path: str, device: str, audio: np.ndarray, rounds: int) -> dict:
    """The model on one file's VAD segments (batches of 4) with per-token confidence on and off, interleaved."""
    from deployments.speech.parakeet import ParakeetRecognizer
    from deployments.speech.settings import VadSettings
    from deployments.speech.vad import SpeechDetector

    pieces = [audio[s.start:s.end] for s in SpeechDetector(VadSettings()).segments(audio)]
    batches = [pieces[i:i + 4] for i in range(0, len(pieces), 4)]
    recognizers = {on: ParakeetRecognizer.load(path, device=device, confidence=on) for on in (True, False)}
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds + 1):  # the first round warms up
        for on, recognizer in recognizers.items():
            started = time.perf_counter()
            for batch in batches:
                recognizer.transcribe(batch)
            times[on].append((time.perf_counter() - started) * 1000)
    on, off = statistics.median(times[True][1:]), statistics.median(times[False][1:])
    return {"audio_s": round(len(audio) / SAMPLE_RATE, 1), "on_ms": round(on, 1), "off_ms": round(off, 1),
            "ratio": round(on / off, 3)}


def two_models(served: Served, second_path: str, audio: np.ndarray, count: int) -> dict:
    """Two models served at once: ``count`` concurrent files all for one model, then alternating between the two
    (both loaded), as audio seconds per second; and how long loading the second model took on the replica."""
    import httpx

    served.deploy(models=[{"id": "first", "source": served.args["model"]}, {"id": "second", "source": second_path}])
    wav = encode(audio)

    def throughput(models: list[str]) -> float:
        async def go() -> float:
            async with httpx.AsyncClient(timeout=3600) as client:
                started = time.perf_counter()
                await asyncio.gather(*[served.one(client, wav, CONFIGS["vad"], model) for model in models])
                return count * len(audio) / SAMPLE_RATE / (time.perf_counter() - started)
        return asyncio.run(go())

    mixed = ["first", "second"] * (count // 2)
    throughput(mixed)  # loads the second model, warms both
    single, both = [], []
    for _ in range(3):
        single.append(throughput(["first"] * count))
        both.append(throughput(mixed))
    load_s = served.handles["Transcriber"].stats.remote().result()["load_seconds"].get("second")
    # (the two-model app stays deployed: this is the run's last served step, and a redeploy restarts every replica)
    return {"files": count, "single_model_x": round(statistics.median(single), 1),
            "mixed_two_models_x": round(statistics.median(both), 1),
            "mixed_over_single": round(statistics.median(both) / statistics.median(single), 3),
            "second_model_load_s": load_s}


# ---------------------------------------------------------------------------------------------- report

def summarise(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {"min_ms": round(ordered[0], 1), "max_ms": round(ordered[-1], 1),
            "avg_ms": round(statistics.mean(ordered), 1), "p50_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)}


def markdown(report: dict) -> str:
    rows = report["rows"]
    minutes = sorted({r["minutes"] for r in rows})
    lines = [f"# Parakeet serving benchmark: {report['name']}", "",
             f"Machine: {report['machine']}. Model: {report['model']} on {report['device']}. "
             f"Concurrency 1 latency, ms, min-max (avg); old server's avg in brackets.", "",
             "| configuration | " + " | ".join(f"{m:g} min" for m in minutes) + " |",
             "|---|" + "---|" * len(minutes)]
    for key, config in CONFIGS.items():
        cells = []
        for m in minutes:
            row = next((r for r in rows if r["config"] == key and r["minutes"] == m and r["concurrency"] == 1), None)
            if row is None:
                cells.append("-")
                continue
            old = OLD_SERVER_MS.get(key)
            old_text = f" [{old[OLD_MINUTES.index(m)]}]" if old and m in OLD_MINUTES else ""
            cells.append(f"{row['min_ms']:.0f}-{row['max_ms']:.0f} ({row['avg_ms']:.0f}){old_text}")
        lines.append(f"| {config['label']} | " + " | ".join(cells) + " |")
    lines += ["", "All runs:", "",
              "| config | min | conc. | p50 ms | p95 ms | avg ms | audio s/s | served/raw | raw ms (quiet) | batch | "
              "VAD / model / align ms, served | VAD / ASR / align ms, raw | GPU util % |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['minutes']:g} | {r['concurrency']} | {r['p50_ms']} | {r['p95_ms']} | "
                     f"{r['avg_ms']} | {r['throughput_x']} | {r['served_over_raw']} | {r['raw_ms']} "
                     f"({r.get('raw_quiet_machine_ms', '-')}) | {r['mean_batch']} | "
                     f"{r.get('served_vad_ms', '-')} / {r.get('served_model_ms', '-')} / "
                     f"{r.get('served_align_ms', '-')} | "
                     f"{r['raw_vad_ms']} / {r['raw_asr_ms']} / {r['raw_align_ms']} | {r.get('gpu_util') or '-'} |")
    if report.get("live_streams"):
        lines += ["", "Concurrent live streams (1024-byte frames, as fast as possible):", "",
                  "| streams x s | Segmenter replicas | wall s | audio s/s | Ingress CPU ms / audio s | "
                  "Segmenter CPU ms / audio s | steps per VAD batch |", "|---|---|---|---|---|---|---|"]
        for r in report["live_streams"]:
            lines.append(f"| {r['streams']} x {r['seconds_each']:g} | {r['segmenter_replicas']} | {r['wall_s']} | "
                         f"{r['throughput_x']} | {r['ingress_cpu_ms_per_audio_s']} | "
                         f"{r['segmenter_cpu_ms_per_audio_s']} | {r['steps_per_batch_one_replica']} |")
    if report.get("turn_latency"):
        lines += ["", "End of an utterance's audio -> its final transcript (audio at real-time pace):", "",
                  "| protocol | sessions | turns | p50 ms | p95 ms |", "|---|---|---|---|---|"]
        for r in report["turn_latency"]:
            lines.append(f"| {r['protocol']} | {r['sessions']} | {r['turns']} | {r['p50_ms']} | {r['p95_ms']} |")
    if report.get("two_models"):
        lines += ["", f"Two models served at once: {report['two_models']}"]
    if report.get("confidence_cost"):
        lines += ["", f"Per-token confidence on vs off (in-process model): {report['confidence_cost']}"]
    extra = report.get("checks", {})
    lines += ["", "Ratios measured in this run:", ""]
    for name, value in extra.items():
        lines.append(f"- {name}: {value}")
    lines += ["", f"Peak RSS per replica (MB): {report.get('peak_rss_mb')}",
              f"Transcriber CUDA max allocated (MB): {report.get('cuda_max_allocated_mb')}", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, config in CONFIGS.items():
        points = sorted((r["minutes"], r["avg_ms"]) for r in report["rows"]
                        if r["config"] == key and r["concurrency"] == 1)
        if points:
            ax.plot(*zip(*points), marker="o", label=config["label"])
        if key in OLD_SERVER_MS:
            ax.plot(OLD_MINUTES, OLD_SERVER_MS[key], linestyle=":", color=ax.lines[-1].get_color() if points else None,
                    alpha=0.6)
    ax.set_xlabel("audio length (minutes)")
    ax.set_ylabel("latency at concurrency 1 (ms, avg)")
    ax.set_yscale("log")
    ax.set_title(f"{report['name']} (dotted: old server)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny | digits | full-random | <.nemo path or HF id>")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 3, 15])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=3, help="repeats of each (config, length, concurrency)")
    parser.add_argument("--audio", nargs="*", default=[], help="your own audio files instead of synthetic speech")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--batch-ms", type=float, default=15)
    parser.add_argument("--vad-threads", type=int, default=1, help="VAD threads of the Segmenter replica")
    parser.add_argument("--vad-onnx-threads", type=int, default=1, help="ONNX threads inside each VAD call")
    parser.add_argument("--transcriber-cpus", type=int, default=1,
                        help="torch threads of the served Transcriber and of the raw reference alike")
    parser.add_argument("--vad-chunk-s", type=float, default=0.0,
                        help="parallel VAD chunks for long files (vad.parallel_chunk_s; 0: exact sequential)")
    parser.add_argument("--live-streams", type=int, default=16,
                        help="concurrent live streams measured with 1 and 2 Segmenter replicas (0: skip)")
    parser.add_argument("--live-seconds", type=float, default=60, help="audio per live stream")
    parser.add_argument("--turn-sessions", type=int, nargs="*", default=[1, 16],
                        help="concurrent sessions for the turn-latency rows (our stream vs the Realtime protocol)")
    parser.add_argument("--turn-seconds", type=float, default=20, help="audio per session in those rows")
    parser.add_argument("--two-models", type=int, default=8,
                        help="concurrent files for the two-models rows (a second copy of the model; 0: skip)")
    parser.add_argument("--name", default=None, help="results file stem (default: <model>-<device>)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument("--work-dir", default="/tmp/parakeet-bench")
    parser.add_argument("--no-serve", action="store_true", help="raw in-process numbers only")
    parser.add_argument("--ingress", choices=front_door.CHOICES, default=None,
                        help="HAProxy or Serve's proxy in front (deployments/front_door.py; default: $PARAKEET_INGRESS, "
                             "else auto, as make serve)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 s of audio, concurrency 1, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.concurrency, args.rounds = [1 / 3], [1], 1
        args.live_streams, args.live_seconds = 4, 10
        args.turn_sessions, args.turn_seconds = [1], 8
        args.two_models = 2

    from tqdm import tqdm

    from deployments.speech.parakeet import resolve_device

    device = resolve_device(args.device)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    path = model_path(args.model, work)
    print(f"model ready in {time.perf_counter() - started:.0f}s", flush=True)
    clips = ([(Path(a).name, load_user_audio(Path(a))) for a in args.audio] if args.audio else
             [(f"{m:g}min", synthetic_speech(m * 60, seed=int(m * 60))) for m in args.minutes])

    vad = {"threads": args.vad_threads, "onnx_threads": args.vad_onnx_threads, "parallel_chunk_s": args.vad_chunk_s}
    raw = RawPipeline(path, device, args.max_batch_size, vad, threads=args.transcriber_cpus)
    # the reference on a quiet machine, before Ray starts (reported beside the paired numbers below)
    idle_raw: dict[tuple, dict] = {}
    for name, audio in clips:
        for key in args.configs:
            config = CONFIGS[key]
            idle_raw[(name, key)] = _stage_medians(
                [raw.run(audio, config["vad"], config["timestamps"]) for _ in range(max(1, args.rounds))])
    vad_check = vad_versus_silero(clips[0][1])
    confidence = confidence_cost(path, device, clips[0][1], max(3, args.rounds))
    print(f"raw reference (quiet machine) done at {time.perf_counter() - started:.0f}s: "
          + ", ".join(f"{n}/{k} {v['total_ms']:.0f} ms" for (n, k), v in idle_raw.items()), flush=True)

    report = {"name": args.name or f"{Path(args.model).stem}-{device}", "model": args.model, "device": device,
              "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} CPUs" + (f", {_gpu_name()}" if device == "cuda" else ""),
              "python": sys.version.split()[0], "torch_threads": args.transcriber_cpus, "rounds": args.rounds,
              "rows": [], "vad_vs_silero": vad_check, "confidence_cost": confidence}
    if not args.no_serve:
        sampler = ResourceSampler()
        sampler.start()
        served = Served(path, args.max_batch_size, args.batch_ms, vad, args.transcriber_cpus, args.ingress)
        report["ingress"] = served.front_door
        progress = tqdm(total=len(clips) * len(args.configs) * len(args.concurrency), desc="served", unit="row")
        try:
            for name, audio in clips:
                idle = {key: idle_raw[(name, key)] for key in args.configs}
                report["rows"] += measure_clip(served, raw, sampler, name, audio, args, idle, progress)
                _save_json(report, args)  # partial results survive an interrupted run
            report["cuda_max_allocated_mb"] = served.stats().get("cuda_max_allocated_mb")
            if args.turn_sessions:
                report["turn_latency"] = turn_latency(served, args.turn_sessions, args.turn_seconds)
            if args.live_streams:
                report["live_streams"] = live_streams(served, args.live_streams, args.live_seconds)
            if args.two_models:  # (last: it leaves the two-model app deployed)
                report["two_models"] = two_models(served, second_copy(path, work), clips[0][1], args.two_models)
        finally:
            progress.close()
            served.shutdown()
            sampler.stop()
        report["peak_rss_mb"] = {k: round(v) for k, v in sampler.peak_rss_mb.items()}
        report["checks"] = checks(report)
    json_path = _save_json(report, args)
    if report["rows"]:
        # names like "parakeet-tdt-0.6b-v2-cuda" hold dots, so build each file name rather than swap suffixes
        json_path.with_name(f"{report['name']}.md").write_text(markdown(report))
        plot(report, json_path.with_name(f"{report['name']}.png"))
    print(markdown(report) if report["rows"] else json.dumps(report, indent=2))
    return report


def measure_clip(served: Served, raw: RawPipeline, sampler: ResourceSampler, name: str, audio: np.ndarray,
                 args, idle: dict[str, dict], progress) -> list[dict]:
    """Rows for every (configuration, concurrency) of one clip: served latencies beside the raw reference.

    Rounds are interleaved (each round runs every configuration once) and, at concurrency 1, each served request
    is paired with a raw in-process run right before it, so slow drifts of a noisy machine (on 2 cores, Ray's own
    idle processes take a share of the CPU) hit both sides of every ratio alike. The first request of each
    configuration is a discarded warm-up on both sides.
    """
    from deployments.speech.audio import float_to_pcm16

    wav, pcm = encode(audio), float_to_pcm16(audio)
    for key in args.configs:
        served.measure(wav, pcm, key, 1)
        raw.run(audio, CONFIGS[key]["vad"], CONFIGS[key]["timestamps"])
    rows = []
    for concurrency in args.concurrency:
        runs = {key: {"latencies": [], "wall": 0.0, "paired": [], "items": 0, "batches": 0, "model_seconds": 0.0,
                      "vad_seconds": 0.0, "align_seconds": 0.0, "gpu": []} for key in args.configs}
        for _ in range(args.rounds):
            for key in args.configs:
                run, config = runs[key], CONFIGS[key]
                if concurrency == 1:
                    run["paired"].append(raw.run(audio, config["vad"], config["timestamps"]))
                before, mark = served.stats(), sampler.mark()
                latencies, wall = served.measure(wav, pcm, key, concurrency)
                after = served.stats()
                run["latencies"] += latencies
                run["wall"] += wall
                for counter in ("items", "batches", "model_seconds", "vad_seconds", "align_seconds"):
                    run[counter] += after[counter] - before[counter]
                run["gpu"] += sampler.gpu_util[mark:]
        for key, run in runs.items():
            reference = _stage_medians(run["paired"]) if run["paired"] else idle[key]
            latencies = run["latencies"]
            rows.append({
                "config": key, "audio": name, "minutes": round(len(audio) / SAMPLE_RATE / 60, 3),
                "concurrency": concurrency, **summarise(latencies),
                "throughput_x": round(len(latencies) * len(audio) / SAMPLE_RATE / run["wall"], 1),
                "mean_batch": round(run["items"] / run["batches"], 2) if run["batches"] else None,
                # served time per stage, per request (at concurrency > 1 a batch's time is shared by its items)
                **{f"served_{stage}_ms": round(run[f"{stage}_seconds"] * 1000 / len(latencies), 1)
                   for stage in ("vad", "model", "align")},
                "gpu_util": round(statistics.mean(run["gpu"]), 1) if run["gpu"] else None,
                "raw_ms": round(reference["total_ms"], 1), "raw_vad_ms": round(reference["vad_ms"], 1),
                "raw_asr_ms": round(reference["asr_ms"], 1), "raw_align_ms": round(reference["align_ms"], 1),
                "raw_paired": bool(run["paired"]), "raw_quiet_machine_ms": round(idle[key]["total_ms"], 1),
                "served_over_raw": round(statistics.median(latencies) / max(reference["total_ms"], 1e-6), 2)})
            progress.update()
    return rows


def _stage_medians(runs: list[dict]) -> dict:
    return {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}


def _save_json(report: dict, args) -> Path:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{report['name']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def checks(report: dict) -> dict:
    """The targets' ratios, each from numbers of this run."""
    rows = report["rows"]
    out: dict = {}

    def p50(key, minutes=None, concurrency=1):
        found = [r for r in rows if r["config"] == key and r["concurrency"] == concurrency
                 and (minutes is None or abs(r["minutes"] - minutes) < 1e-6)]
        return found[0]["p50_ms"] if found else None

    lengths = sorted({r["minutes"] for r in rows})
    for m in lengths:
        with_ts, without = p50("vad_ts", m), p50("vad", m)
        if with_ts and without:
            out[f"timestamps on/off, VAD, {m:g} min (target <= 1.05)"] = round(with_ts / without, 3)
        for streamed, offline, label in (("stream", "vad", ""), ("stream_ts", "vad_ts", " + timestamps")):
            if p50(streamed, m) and p50(offline, m):
                out[f"streaming / offline VAD{label}, {m:g} min (target <= 1.3)"] = round(
                    p50(streamed, m) / p50(offline, m), 3)
        served_raw = [r["served_over_raw"] for r in rows if r["minutes"] == m and r["concurrency"] == 1
                      and r["config"] not in STREAMED]
        if served_raw:
            out[f"served / raw at concurrency 1, {m:g} min (target <= 1.15)"] = served_raw
    for count in sorted({r["sessions"] for r in report.get("turn_latency", [])}):
        by = {r["protocol"]: r for r in report["turn_latency"] if r["sessions"] == count}
        if by.get("stream", {}).get("p50_ms") and by.get("realtime", {}).get("p50_ms"):
            out[f"Realtime / stream turn latency p50, {count} sessions (target <= 1.05)"] = round(
                by["realtime"]["p50_ms"] / by["stream"]["p50_ms"], 3)
    if report.get("confidence_cost"):
        out["confidence on/off, in-process model (target <= 1.05)"] = report["confidence_cost"]["ratio"]
    if report.get("two_models"):
        out["mixed two-model / single-model throughput (target >= 0.9)"] = report["two_models"]["mixed_over_single"]
    vad = report["vad_vs_silero"]
    out["VAD speed-up over silero's loop (target >= 2)"] = f"{vad['speedup']}x, segments match: {vad['segments_match']}"
    best = max((r["throughput_x"] for r in rows), default=None)
    out["best throughput (audio seconds per second)"] = best
    return out


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        return "GPU"


if __name__ == "__main__":
    main()
