"""An offline install for machines without a package registry (air-gapped GPU nodes): the wheels the service
needs to *serve*, for a chosen Python and platform, in one folder.

    python -m tools.wheelhouse build --out wheelhouse [--python 3.12 --platform manylinux_2_28_x86_64]
    python -m tools.wheelhouse trace          # maintainers: re-derive configs/serve-requirements.txt

(``make wheelhouse`` / ``make install-offline`` run these.) Lean by construction: ``configs/serve-requirements.txt``
lists exactly the distributions that the serving path imports, found by ``trace``: it runs the service with an
import recorder in every Python process Ray starts, sends it every kind of request (formats PyAV decodes, VAD,
timestamps, SSE, both WebSockets, the handle), and maps the modules loaded to their distributions. Those are
installed without their declared dependencies (NeMo's training stack, dataset tools, loggers never load when
serving); torch comes with its own (on Linux x86_64, the CUDA libraries), and GPU-only imports are listed by hand
(``GPU_ONLY``), as are the few needed without an import (``NOT_IMPORTED``).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "configs" / "serve-requirements.txt"
PROJECT = "parakeet-serve"
# Imported only on a GPU (NeMo's CUDA-graph TDT decoder), so a CPU trace cannot see them
GPU_ONLY = ["cuda-bindings", "cuda-pathfinder"]
# Needed but never imported, so the trace cannot see them
NOT_IMPORTED = {"silero-vad": "the VAD's ONNX files are its package data",
                "safetensors": "transformers checks its installed version when NeMo imports it"}
# torch (the Makefile's pin) is installed with its dependencies: the CUDA libraries of its Linux wheels are not
# Python imports, so the trace cannot see them
TORCH = "torch"


# ---------------------------------------------------------------------------------------------- build

def torch_pin() -> str:
    """The Makefile's torch pin (one place for it)."""
    return re.search(r"^TORCH \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def pinned_requirements() -> list[str]:
    return [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()
            if line.split("#")[0].strip()]


def build(out: Path, python: str | None, platform: str | None) -> int:
    """Download (or build, for pure-Python sdists) every wheel into ``out``; returns its size in bytes."""
    out.mkdir(parents=True, exist_ok=True)
    target = []
    if python:
        target += ["--python-version", python]
    if platform:
        target += ["--platform", platform]
    pip = [sys.executable, "-m", "pip"]
    wanted = pinned_requirements()
    while wanted:  # all in one pip call (one each took minutes); a package with no wheel is built here instead
        fetched = subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", *target,
                                  "--dest", str(out), *wanted], capture_output=True, text=True)
        if fetched.returncode == 0:
            break
        missing = re.search(r"No matching distribution found for (\S+)", fetched.stderr)
        if missing is None or missing.group(1) not in wanted:
            raise SystemExit(f"pip download failed:\n{fetched.stderr[-2000:]}")
        # an sdist-only package: pure Python, so its wheel fits any platform
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "--wheel-dir", str(out), missing.group(1)], check=True)
        wanted.remove(missing.group(1))
    subprocess.run([*pip, "download", "-q", "--only-binary=:all:", *target, "--dest", str(out), torch_pin()],
                   check=True)
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--wheel-dir", str(out), str(ROOT)], check=True)
    shutil.copyfile(REQUIREMENTS, out / "serve-requirements.txt")
    (out / "torch-requirement.txt").write_text(torch_pin() + "\n")
    return sum(f.stat().st_size for f in out.iterdir())


def install_offline(wheelhouse: Path, python: str = sys.executable) -> None:
    """Install the service from ``wheelhouse`` into ``python``'s environment without any index."""
    if not (wheelhouse / "torch-requirement.txt").is_file():
        raise SystemExit(f"{wheelhouse} is not a wheelhouse: build one with `make wheelhouse` where there is a "
                         "package registry, copy it here, and pass it as WHEELHOUSE=<folder>.")
    pip = [python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheelhouse)]
    subprocess.run([*pip, *(wheelhouse / "torch-requirement.txt").read_text().split()], check=True)
    subprocess.run([*pip, "--no-deps", "-r", str(wheelhouse / "serve-requirements.txt")], check=True)
    project = sorted(wheelhouse.glob(f"{PROJECT.replace('-', '_')}-*.whl"))
    subprocess.run([*pip, "--no-deps", str(project[-1])], check=True)


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


# ---------------------------------------------------------------------------------------------- trace

RECORDER = '''
import atexit, os, sys, threading, time
_path = os.path.join(os.environ["PARAKEET_IMPORT_TRACE"], f"{os.getpid()}.txt")
def _dump():
    try:
        with open(_path, "w") as f:
            f.write("\\n".join(sorted(sys.modules)))
    except Exception:
        pass
def _every_second():
    while True:
        time.sleep(1)
        _dump()
threading.Thread(target=_every_second, daemon=True).start()
atexit.register(_dump)
'''


def trace(model: str, port: int = 8011) -> list[str]:
    """Run the service as ``make serve`` does (serve_config.yaml, ``model``) with the import recorder in every Python
    process, exercise every path, and return the distributions imported, pinned to the installed versions."""
    import httpx

    with tempfile.TemporaryDirectory() as folder:
        recorder, records = Path(folder) / "recorder", Path(folder) / "records"
        recorder.mkdir()
        records.mkdir()
        (recorder / "sitecustomize.py").write_text(RECORDER)
        config = Path(folder) / "serve_config.yaml"
        config.write_text((ROOT / "serve_config.yaml").read_text().replace("port: 8000", f"port: {port}"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(recorder), str(ROOT)]),
               "PARAKEET_IMPORT_TRACE": str(records), "PARAKEET_MODEL": model, "HF_HUB_OFFLINE": "1"}
        env.pop("RAY_ADDRESS", None)
        # what `make serve` runs
        service = subprocess.Popen([sys.executable, "-m", "deployments.launch", str(config), "--metrics-port",
                                    str(port + 1)], env=env, cwd=ROOT,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            _exercise(f"http://127.0.0.1:{port}")
            httpx.get(f"http://127.0.0.1:{port + 1}/metrics", timeout=10)
            time.sleep(3)  # every process writes its modules once a second
        finally:
            service.send_signal(signal.SIGINT)
            service.wait(timeout=120)
        modules = {line.split(".")[0] for record in records.iterdir() for line in record.read_text().split()}
    owners = metadata.packages_distributions()
    found = {dist for module in modules for dist in owners.get(module, [])}
    names = ({_name(d) for d in found} - {PROJECT} - {TORCH}) | set(GPU_ONLY) | set(NOT_IMPORTED)
    return sorted(f"{metadata.distribution(n).metadata['Name']}=={metadata.version(n)}" for n in names
                  if _installed(n))


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def _exercise(url: str) -> None:
    """Every kind of request, so every import the serving path makes happens."""
    import asyncio
    import base64
    import json

    import httpx
    import websockets

    from bench.audio import encode, phrase_recording
    from deployments.speech.audio import float_to_pcm16
    from deployments.speech.parakeet_defaults import SAMPLE_RATE

    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not become ready")
        time.sleep(1)
    audio = phrase_recording(["four", "two"]).audio
    for name, data in [("a.wav", encode(audio)), ("a.flac", encode(audio, "FLAC")),
                       ("a.ogg", encode(audio, "OGG", subtype="VORBIS")), ("a.wav", encode(audio, sample_rate=8000))]:
        for fields in ({}, {"response_format": "verbose_json", "timestamp_granularities[]": "word"},
                       {"stream": "true"}, {"response_format": "srt"}, {"vad": "false"}):
            httpx.post(url + "/v1/audio/transcriptions", files={"file": (name, data)}, data=fields, timeout=120)
    httpx.post(url + "/transcribe", files={"file": ("a.wav", encode(audio))}, data={"include_timestamps": "true"},
               timeout=120)
    for path in ("/v1/models", "/demo", "/healthz", "/docs", "/openapi.json"):
        httpx.get(url + path, timeout=30)
    pcm = float_to_pcm16(audio)

    async def streams() -> None:
        async with websockets.connect(url.replace("http", "ws") + "/v1/audio/stream") as ws:
            await ws.send(json.dumps({"sample_rate": SAMPLE_RATE, "timestamps": True}))
            await ws.send(pcm)
            await ws.send(json.dumps({"type": "end"}))
            while json.loads(await ws.recv())["type"] != "done":
                pass
        async with websockets.connect(url.replace("http", "ws") + "/v1/realtime?intent=transcription") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}, "turn_detection": None}}}}))
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(pcm).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while json.loads(await ws.recv())["type"] not in (
                    "conversation.item.input_audio_transcription.completed", "error"):
                pass

    asyncio.run(streams())


def write_requirements(pins: list[str]) -> None:
    header = ("# The distributions the serving path imports (python -m tools.wheelhouse trace), installed\n"
              "# without their declared dependencies by `make install-offline`; torch brings its own.\n")
    REQUIREMENTS.write_text(header + "\n".join(pins) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="collect the wheels")
    build_cmd.add_argument("--out", default="wheelhouse")
    build_cmd.add_argument("--python", default=None, help="target Python, e.g. 3.12 (default: this one)")
    build_cmd.add_argument("--platform", default=None, help="target platform tag, e.g. manylinux_2_28_x86_64")
    install_cmd = commands.add_parser("install", help="install from a wheelhouse with no index")
    install_cmd.add_argument("wheelhouse")
    install_cmd.add_argument("--python", default=sys.executable, help="the environment's interpreter")
    trace_cmd = commands.add_parser("trace", help="re-derive configs/serve-requirements.txt")
    trace_cmd.add_argument("--model", default=str(ROOT / "tests" / "fixtures" / "digits.nemo"))
    args = parser.parse_args(argv)
    if args.command == "build":
        size = build(Path(args.out), args.python, args.platform)
        wheels = len(list(Path(args.out).glob("*.whl")))
        print(f"{args.out}: {wheels} wheels, {size / 2**20:.0f} MiB")
    elif args.command == "install":
        install_offline(Path(args.wheelhouse), args.python)
    else:
        pins = trace(args.model)
        write_requirements(pins)
        print(f"{REQUIREMENTS}: {len(pins)} distributions")


if __name__ == "__main__":
    main()
