"""Keyterms, served: what boosting costs and what it gains.

    python -m bench.keyterms              # digits model, ~4 min on 2 cores
    python -m bench.keyterms --quick      # fewer requests

Rows (one run, the same served app):
- throughput at concurrency 4 with 0 / 100 / 1,000 terms per request (audio seconds per wall second; each of the 4
  clients has its own term set, as apps with their own vocabularies would; the median of 3 rounds, the rows
  alternating; each request's body encoded before timing), and each ratio to no terms;
- p50 latency at concurrency 1 with 100 terms against none (the added milliseconds);
- recall on noisy held-out speech (white noise at 0 dB: the 40 utterances of voices the model never heard):
  utterances transcribed exactly without keyterms and with the spoken digit string boosted, and, with a random
  digit string that was not said boosted instead, the WER and how often the output is that unsaid string.
Writes bench/results/keyterms-<model>-cpu.json and .md. Nothing here is asserted (tests/unit/test_biasing.py and
tests/integration/test_keyterms.py hold the recall and isolation).

    python -m bench.keyterms --in-process --model full-random   # the model alone: what boosting adds to a batch

``--in-process`` times the recognizer alone (no Ray, one torch thread): a batch of four 10 s files with 0 / 100 /
1,000 terms per item (each its own set; the median of 3 rounds, the rows alternating), its milliseconds and each
ratio to no terms. Boosting's cost is NeMo's per decoding step, the encoder's per second of audio, so the share
depends on the model's size: the digits model's encoder is tiny. Writes keyterms-in-process-<model>-cpu.json / .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.audio import DIGITS, encode, noisy_heldout, synthetic_speech, word_errors
from bench.run import RESULTS, Served, model_path, save_report

CLIENTS = 4
ROUNDS = 3  # throughput rounds; each row reports its median


def term_set(count: int, seed: int, words: list[str] = DIGITS[:10], longest: int = 4) -> list[str]:
    """``count`` distinct phrases of 1-``longest`` of ``words`` (by default digit strings of 1-4 words: account
    codes, product numbers)."""
    rng = random.Random(seed)
    terms: dict[str, None] = {}
    while len(terms) < count:
        terms.setdefault(" ".join(rng.choice(words) for _ in range(rng.randint(1, longest))), None)
    return list(terms)


async def throughput(url: str, files: list[bytes], seconds: float, terms: list[list[str]] | None,
                     concurrency: int) -> tuple[float, list[float]]:
    """Every file sent once by ``concurrency`` clients (client i boosts ``terms[i]``); audio s per wall s and each
    request's latency. Each request's multipart body is encoded before the clock starts: the client shares this
    machine's two cores with the service, and httpx writes a form's fields one by one (with 1,000 keyterm fields it
    took most of a core), which is the client's cost, not the service's."""
    import httpx

    queue = list(range(len(files)))
    latencies: list[float] = []
    bodies = {}
    for index in range(concurrency):
        for number, file in enumerate(files):
            request = httpx.Request("POST", url + "/v1/audio/transcriptions", files={"file": ("a.wav", file)},
                                    data={"keyterms": terms[index]} if terms else {})
            bodies[index, number] = (request.read(), request.headers["content-type"])

    async def client(index: int, http: httpx.AsyncClient) -> None:
        while queue:
            body, content_type = bodies[index, queue.pop()]
            started = time.perf_counter()
            response = await http.post(url + "/v1/audio/transcriptions", content=body,
                                       headers={"content-type": content_type})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=600) as http:
        started = time.perf_counter()
        await asyncio.gather(*[client(i, http) for i in range(concurrency)])
        wall = time.perf_counter() - started
    return seconds * len(files) / wall, latencies


def recall(url: str) -> dict:
    import httpx

    pick = random.Random(9)
    exact = {"plain": 0, "boosted": 0}
    misled_as_unsaid, errors = 0, {"plain": 0, "boosted": 0, "unsaid": 0}
    words = 0

    def text(audio: np.ndarray, terms: list[str]) -> str:
        return httpx.post(url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(audio))},
                          data={"keyterms": terms} if terms else {}, timeout=120).json()["text"]

    material = noisy_heldout(0.0)
    for noisy, said in material:
        unsaid = " ".join(pick.choice(DIGITS[:10]) for _ in said.split())
        heard = {"plain": text(noisy, []), "boosted": text(noisy, [said]), "unsaid": text(noisy, [unsaid])}
        words += len(said.split())
        for kind, hypothesis in heard.items():
            errors[kind] += word_errors(said, hypothesis)
        exact["plain"] += heard["plain"] == said
        exact["boosted"] += heard["boosted"] == said
        misled_as_unsaid += heard["unsaid"] == unsaid != said
    count = len(material)
    return {"utterances": count, "snr_db": 0, "exact_plain": exact["plain"], "exact_boosted": exact["boosted"],
            "wer_plain": round(errors["plain"] / words, 3), "wer_boosted": round(errors["boosted"] / words, 3),
            "wer_unsaid_boosted": round(errors["unsaid"] / words, 3), "output_is_the_unsaid_phrase": misled_as_unsaid}


def vocabulary_words(tokenizer) -> list[str]:
    """The whole words of 3 letters or more in the model's own vocabulary (terms for a model that cannot spell the
    digit words)."""
    pieces = tokenizer.ids_to_tokens(list(range(tokenizer.vocab_size)))
    return [p[1:] for p in pieces if p.startswith("\u2581") and p[1:].isalpha() and len(p) > 3]


def in_process(model: str, reps: int) -> dict:
    """A batch of four 10 s files through the recognizer alone, with 0 / 100 / 1,000 terms per item."""
    import torch

    from deployments.speech.errors import KeytermError
    from deployments.speech.keyterms import Keyterms
    from deployments.speech.parakeet import ParakeetRecognizer

    torch.set_num_threads(1)  # (the served Transcriber's default)
    recognizer = ParakeetRecognizer.load(model_path(model, Path("/tmp/parakeet-bench")), device="cpu")
    waves = [synthetic_speech(10.0, seed=100 + i).astype(np.float32) for i in range(CLIENTS)]
    sets: dict[int, list | None] = {0: None}
    for count in (100, 1000):
        sets[count] = [Keyterms(tuple(term_set(count, seed=1000 * count + c)), 2.0) for c in range(CLIENTS)]
        try:
            recognizer.keyterms.prepare(sets[count][0])
        except KeytermError:  # (its tokenizer lacks a letter of the digit words)
            words = vocabulary_words(recognizer.model.tokenizer)
            sets[count] = [Keyterms(tuple(term_set(count, 1000 * count + c, words, longest=3)), 2.0)
                           for c in range(CLIENTS)]
    for terms in sets.values():  # trees built and the model warm before timing
        recognizer.transcribe(waves, terms)
    spent: dict[int, list[float]] = {count: [] for count in sets}
    for _ in range(ROUNDS):
        for count, terms in sets.items():
            started = time.perf_counter()
            for _ in range(reps):
                recognizer.transcribe(waves, terms)
            spent[count].append((time.perf_counter() - started) / reps * 1000)
    batch = {count: statistics.median(ms) for count, ms in spent.items()}
    return {f"{count} terms": {"batch_ms": round(ms, 1), "added_ms": round(ms - batch[0], 1),
                               "ratio_to_no_terms": round(batch[0] / ms, 3), "rounds_ms": [round(v, 1) for v in
                                                                                          spent[count]]}
            for count, ms in batch.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--in-process", action="store_true", help="the recognizer alone (see above)")
    parser.add_argument("--reps", type=int, default=6, help="--in-process: batches timed per row and round")
    args = parser.parse_args(argv)
    if args.in_process:
        rows = in_process(args.model, args.reps)
        name = f"keyterms-in-process-{Path(args.model).stem}-cpu"
        report = {"command": "python -m bench.keyterms " + " ".join(sys.argv[1:] if argv is None else argv),
                  "model": args.model, "batch": f"{CLIENTS} files of 10 s", "rows": rows}
        lines = [f"# Keyterms in process ({args.model} model, one torch thread)", "", f"`{report['command']}`", "",
                 f"A batch of {CLIENTS} files of 10 s through the recognizer alone (median of {ROUNDS} rounds, rows "
                 "alternating):", "", "| terms per item | batch ms | added ms | ratio to none |", "|---|---|---|---|"]
        lines += [f"| {label} | {r['batch_ms']} | {r['added_ms']} | {r['ratio_to_no_terms']} |"
                  for label, r in rows.items()]
        save_report(name, report, "\n".join(lines) + "\n")
        return report
    seconds = 10.0
    count = 12 if args.quick else 32
    files = [encode(synthetic_speech(seconds, seed=100 + i)) for i in range(count)]
    served = Served(model_path(args.model, Path("/tmp/parakeet-bench")), 4, 15, {})
    rows: dict[str, dict] = {}
    try:
        sets = {n: [term_set(n, seed=1000 * n + c) for c in range(CLIENTS)] for n in (100, 1000)}
        for n, clients in sets.items():  # each set's tree built once, before it is timed (as a warm service)
            asyncio.run(throughput(served.url, files[:CLIENTS], seconds, clients, CLIENTS))
        asyncio.run(throughput(served.url, files[:CLIENTS], seconds, None, CLIENTS))
        rates: dict[str, list[float]] = {}
        for _ in range(ROUNDS):  # (the rows alternate: a row lasts seconds here, so the machine's drift is shared)
            for label, terms in (("0 terms", None), ("100 terms", sets[100]), ("1000 terms", sets[1000])):
                rate, _ = asyncio.run(throughput(served.url, files, seconds, terms, CLIENTS))
                rates.setdefault(label, []).append(round(rate, 2))
        for label, measured in rates.items():
            rows[label] = {"audio_s_per_s": statistics.median(measured), "rounds": measured}
        for label, terms in (("0 terms", None), ("100 terms", sets[100][:1])):
            _, latencies = asyncio.run(throughput(served.url, files, seconds, terms, 1))
            rows[label]["p50_ms_concurrency_1"] = round(statistics.median(latencies) * 1000, 1)
        gains = recall(served.url)
    finally:
        served.shutdown()
    base = rows["0 terms"]["audio_s_per_s"]
    for row in rows.values():
        row["ratio_to_no_terms"] = round(row["audio_s_per_s"] / base, 3)
    added = round(rows["100 terms"]["p50_ms_concurrency_1"] - rows["0 terms"]["p50_ms_concurrency_1"], 1)
    report = {"command": "python -m bench.keyterms " + " ".join(sys.argv[1:] if argv is None else argv), "model": args.model,
              "file_s": seconds, "files": count, "clients": CLIENTS, "throughput": rows,
              "added_p50_ms_100_terms": added, "recall": gains,
              "targets": {"100 terms": ">= 0.95", "1000 terms": ">= 0.90", "added p50 ms": "<= 10"}}
    name = f"keyterms-{Path(args.model).stem}-cpu"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Keyterms ({args.model} model, 2-core CPU)\n", f"`{report['command']}`\n",
             f"Throughput, {count} files of {seconds:g} s at concurrency {CLIENTS} (each client its own term set; the "
             f"median of {ROUNDS} rounds, the rows alternating):\n",
             "| terms per request | audio s / s | ratio to none | target |", "|---|---|---|---|"]
    for label, target in (("0 terms", ""), ("100 terms", ">= 0.95"), ("1000 terms", ">= 0.90")):
        lines.append(f"| {label} | {rows[label]['audio_s_per_s']} | {rows[label]['ratio_to_no_terms']} | {target} |")
    lines += ["", f"p50 at concurrency 1: {rows['0 terms']['p50_ms_concurrency_1']} ms without terms, "
              f"{rows['100 terms']['p50_ms_concurrency_1']} ms with 100: {added:+} ms (target <= 10).", "",
              f"Recall, {gains['utterances']} noisy held-out utterances (0 dB): exact {gains['exact_plain']} -> "
              f"{gains['exact_boosted']} with the spoken string boosted; WER {gains['wer_plain']} -> "
              f"{gains['wer_boosted']}. An unsaid string boosted instead: WER {gains['wer_unsaid_boosted']}, output "
              f"equal to it {gains['output_is_the_unsaid_phrase']} times."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
