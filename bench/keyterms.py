"""Keyterms, served: what boosting costs and what it gains.

    python -m bench.keyterms              # digits model, ~6 min on 2 cores
    python -m bench.keyterms --quick      # fewer requests

Rows (one run, the same served app):
- throughput at concurrency 4 with 0 / 100 / 1,000 terms per request (audio seconds per wall second; each of the 4
  clients has its own term set, as apps with their own vocabularies would; each request's body encoded before
  timing; the median of 15 rounds), and each ratio to no terms: the median of the rounds' own ratios (each round
  runs the rows back to back, A B C then C B A, so a row is compared with the no-terms row of the same minute);
- p50 latency at concurrency 1 with 100 terms against none (each file sent both ways back to back; the added
  milliseconds: the median of the files' differences);
- recall on noisy held-out speech (white noise at 0 dB: the 40 utterances of voices the model never heard):
  utterances transcribed exactly without keyterms and with the spoken digit string boosted, and, with a random
  digit string that was not said boosted instead, the WER and how often the output is that unsaid string.
Writes bench/results/keyterms-<model>-cpu.json and .md. Nothing here is asserted (tests/unit/test_biasing.py and
tests/integration/test_keyterms.py hold the recall and isolation).

    python -m bench.keyterms --in-process --model full-random   # the model alone: what boosting adds to a batch

``--in-process`` times the recognizer alone (no Ray, one torch thread): four 10 s files with 0 / 100 / 1,000 terms
per item (each its own set, the default boost), as one model call of four and as four calls of one, their
milliseconds and each ratio to no terms (paired by round, as above). Boosting's cost is NeMo's per decoding step,
the encoder's per second of audio, so the share depends on the model's size: the digits model's encoder is tiny
(and its tokens are letters: several decoding steps a word). Writes keyterms-in-process-<model>-cpu.json / .md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
ROUNDS = 15  # served throughput rounds; each ratio is the median of the rounds' own ratios


def paired_rounds(measure, labels: list, rounds: int = ROUNDS) -> dict:
    """``measure(label)`` for every label, ``rounds`` times, in the order A B C then C B A (then again): a row lasts
    seconds, and this machine's speed drifts ±25 % over minutes, so each round's rows share its speed and the ratio
    of two rows of one round is steadier than the ratio of two rows' medians."""
    measured: dict = {label: [] for label in labels}
    for round_ in range(rounds):
        for label in labels if round_ % 2 == 0 else labels[::-1]:
            measured[label].append(measure(label))
    return measured


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median over rounds of each round's ratio."""
    return round(statistics.median(a / b for a, b in zip(numerators, denominators)), 3)


def ratio_quartiles(numerators: list[float], denominators: list[float]) -> list[float]:
    """The first and third quartiles of the rounds' ratios (how far this machine moved them)."""
    quartiles = statistics.quantiles([a / b for a, b in zip(numerators, denominators)], n=4)
    return [round(quartiles[0], 3), round(quartiles[2], 3)]


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


def in_process(model: str, rounds: int) -> dict:
    """Four 10 s files through the recognizer alone, with 0 / 100 / 1,000 terms per item (the served default boost),
    as one model call of four and as four calls of one (what a busy 2-core service mostly runs)."""
    import torch

    from deployments.speech.errors import KeytermError
    from deployments.speech.keyterms import Keyterms
    from deployments.speech.parakeet import ParakeetRecognizer
    from deployments.speech.settings import KeytermSettings

    torch.set_num_threads(1)  # (the served Transcriber's default)
    boost = KeytermSettings().boost
    recognizer = ParakeetRecognizer.load(model_path(model, Path("/tmp/parakeet-bench")), device="cpu")
    waves = [synthetic_speech(10.0, seed=100 + i).astype(np.float32) for i in range(CLIENTS)]
    sets: dict[int, list | None] = {0: None}
    for count in (100, 1000):
        sets[count] = [Keyterms(tuple(term_set(count, seed=1000 * count + c)), boost) for c in range(CLIENTS)]
        try:
            recognizer.keyterms.prepare(sets[count][0])
        except KeytermError:  # (its tokenizer lacks a letter of the digit words)
            words = vocabulary_words(recognizer.model.tokenizer)
            sets[count] = [Keyterms(tuple(term_set(count, 1000 * count + c, words, longest=3)), boost)
                           for c in range(CLIENTS)]
    layouts = {"one call of 4": [list(range(CLIENTS))], "4 calls of 1": [[i] for i in range(CLIENTS)]}
    rows: dict[str, dict] = {}
    for layout, calls in layouts.items():
        def run(count: int) -> None:
            for call in calls:
                recognizer.transcribe([waves[i] for i in call], None if count == 0 else [sets[count][i] for i in call])

        def files_ms(count: int) -> float:
            started = time.perf_counter()
            run(count)
            return (time.perf_counter() - started) * 1000

        for count in sets:  # trees built and the model warm before timing
            run(count)
        spent = paired_rounds(files_ms, list(sets), rounds)
        for count, ms in spent.items():
            rows[f"{layout}, {count} terms"] = {
                "ms": round(statistics.median(ms), 1), "added_ms": round(statistics.median(
                    b - a for a, b in zip(spent[0], ms)), 1), "ratio_to_no_terms": median_ratio(spent[0], ms),
                "ratio_quartiles": ratio_quartiles(spent[0], ms)}
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--in-process", action="store_true", help="the recognizer alone (see above)")
    parser.add_argument("--rounds", type=int, default=41, help="--in-process: rounds (each times every row once)")
    args = parser.parse_args(argv)
    if args.in_process:
        rows = in_process(args.model, args.rounds)
        name = f"keyterms-in-process-{Path(args.model).stem}-cpu"
        report = {"command": "python -m bench.keyterms " + " ".join(sys.argv[1:] if argv is None else argv),
                  "model": args.model, "files": f"{CLIENTS} files of 10 s", "rows": rows}
        lines = [f"# Keyterms in process ({args.model} model, one torch thread)", "", f"`{report['command']}`", "",
                 f"{CLIENTS} files of 10 s through the recognizer alone, the default boost; {args.rounds} rounds, each "
                 "timing every row once (A B C / C B A order). ms: the median for the four files; added ms and the "
                 "ratio: the median of the rounds' own, with the ratio's quartiles:", "",
                 "| model calls, terms per item | ms | added ms | ratio to none | quartiles |", "|---|---|---|---|---|"]
        lines += [f"| {label} | {r['ms']} | {r['added_ms']} | {r['ratio_to_no_terms']} | "
                  f"{r['ratio_quartiles'][0]}-{r['ratio_quartiles'][1]} |" for label, r in rows.items()]
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
        by_label = {"0 terms": None, "100 terms": sets[100], "1000 terms": sets[1000]}
        rates = paired_rounds(lambda label: round(asyncio.run(
            throughput(served.url, files, seconds, by_label[label], CLIENTS))[0], 2), list(by_label))
        for label, measured in rates.items():
            rows[label] = {"audio_s_per_s": statistics.median(measured), "rounds": measured,
                           "ratio_to_no_terms": median_ratio(measured, rates["0 terms"]),
                           "ratio_quartiles": ratio_quartiles(measured, rates["0 terms"])}
        # concurrency 1: each file once without terms and once with 100, back to back (A B then B A)
        requests = itertools.count()
        alone = {"0 terms": None, "100 terms": sets[100][:1]}
        latencies = paired_rounds(lambda label: asyncio.run(throughput(
            served.url, [files[next(requests) // 2]], seconds, alone[label], 1))[1][0] * 1000, list(alone), count)
        for label, measured in latencies.items():
            rows[label]["p50_ms_concurrency_1"] = round(statistics.median(measured), 1)
        added = round(statistics.median(b - a for a, b in zip(latencies["0 terms"], latencies["100 terms"])), 1)
        gains = recall(served.url)
    finally:
        served.shutdown()
    report = {"command": "python -m bench.keyterms " + " ".join(sys.argv[1:] if argv is None else argv), "model": args.model,
              "file_s": seconds, "files": count, "clients": CLIENTS, "throughput": rows,
              "added_p50_ms_100_terms": added, "recall": gains,
              "targets": {"100 terms": ">= 0.95", "1000 terms": ">= 0.90", "added p50 ms": "<= 10"}}
    name = f"keyterms-{Path(args.model).stem}-cpu"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Keyterms ({args.model} model, 2-core CPU)\n", f"`{report['command']}`\n",
             f"Throughput, {count} files of {seconds:g} s at concurrency {CLIENTS} (each client its own term set; the "
             f"median of {ROUNDS} rounds; each ratio the median of the rounds' own, the rows in A B C / C B A order):\n",
             "| terms per request | audio s / s | ratio to none | quartiles | target |", "|---|---|---|---|---|"]
    for label, target in (("0 terms", ""), ("100 terms", ">= 0.95"), ("1000 terms", ">= 0.90")):
        row = rows[label]
        lines.append(f"| {label} | {row['audio_s_per_s']} | {row['ratio_to_no_terms']} | "
                     f"{row['ratio_quartiles'][0]}-{row['ratio_quartiles'][1]} | {target} |")
    lines += ["", f"p50 at concurrency 1: {rows['0 terms']['p50_ms_concurrency_1']} ms without terms, "
              f"{rows['100 terms']['p50_ms_concurrency_1']} ms with 100; added (the median of each file's difference): "
              f"{added:+} ms (target <= 10).", "",
              f"Recall, {gains['utterances']} noisy held-out utterances (0 dB): exact {gains['exact_plain']} -> "
              f"{gains['exact_boosted']} with the spoken string boosted; WER {gains['wer_plain']} -> "
              f"{gains['wer_boosted']}. An unsaid string boosted instead: WER {gains['wer_unsaid_boosted']}, output "
              f"equal to it {gains['output_is_the_unsaid_phrase']} times."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
