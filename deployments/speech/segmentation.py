"""Silero's speech-timestamp state machine, fed probabilities piece by piece, emitting segments once they are final.

``silero_vad.get_speech_timestamps_from_probs`` needs every probability of the file before it returns anything,
so VAD and transcription could only run one after the other. This is the same state machine, window for window
(thresholds, the longest-pause cut at ``max_segment_s``, ``min_speech`` / ``min_silence``, padding), kept as
state between calls: a segment is handed out as soon as nothing later in the file can change it, so the
Transcriber starts on the first phrases while VAD is still reading the rest. Fed the same probabilities it returns
exactly silero's segments, then merged; ``tests/unit/test_segmentation.py`` checks that against silero's own
function and a one-pass merge, on random and real probabilities cut into random pieces.

When a segment is final:
- silero's raw speech ``k`` is padded using its neighbours (half the pause when the pause is under two pads), so
  it is final once raw speech ``k + 1`` has been confirmed (speech that starts may still be dropped as too short),
  or once no later speech can start within two pads of its end (then its padding no longer depends on what follows:
  this is what lets a live stream's utterance end during the pause, not when the next one starts);
- merged segments (``merge_up_to_s`` / ``merge_max_gap_s``) are final once no later segment can join them.

``open_from()`` says where the earliest segment not yet handed out may start, so a caller holding audio (a live
stream) knows what it may drop and when a pause is long enough to end an utterance.
"""

from __future__ import annotations

import math
from typing import Iterable

from .parakeet_defaults import SAMPLE_RATE
from .schemas import SpeechSegment
from .settings import VadSettings

WINDOW_SAMPLES = 512  # one Silero window at 16 kHz (32 ms)
# silero's defaults for the cut at max_speech_duration_s, which get_speech_timestamps_from_probs also uses
MIN_SILENCE_AT_MAX_SPEECH_MS = 98


class SpeechTimeline:
    """One file's (or stream's) segments, built incrementally. Not thread-safe; one instance per audio."""

    def __init__(self, settings: VadSettings, keep_speech: bool = False):
        self.keep_speech = keep_speech
        self.threshold = settings.threshold
        self.neg_threshold = settings.neg_threshold if settings.neg_threshold is not None else max(
            settings.threshold - 0.15, 0.01)
        # the same float arithmetic as silero, so every comparison falls the same way
        self.min_speech = SAMPLE_RATE * settings.min_speech_duration_ms / 1000
        self.pad = SAMPLE_RATE * settings.speech_pad_ms / 1000
        self.max_speech = SAMPLE_RATE * settings.max_segment_s - WINDOW_SAMPLES - 2 * self.pad
        self.min_silence = SAMPLE_RATE * settings.min_silence_duration_ms / 1000
        self.min_silence_at_max_speech = SAMPLE_RATE * MIN_SILENCE_AT_MAX_SPEECH_MS / 1000
        self.merge_up_to = int(settings.merge_up_to_s * SAMPLE_RATE)
        self.merge_max_gap = int(settings.merge_max_gap_s * SAMPLE_RATE)
        self.windows = 0  # probabilities consumed so far
        # the state machine (names as in silero)
        self.triggered = False
        self.current: dict[str, int] = {}
        self.temp_end = 0
        self.prev_end = 0
        self.next_start = 0
        self.possible_ends: list[tuple[int, int]] = []
        # raw speeches not yet padded, the previous raw speech (its end pads the next start), the merge in progress
        self.raw: list[dict[str, int]] = []
        self.previous_raw: dict[str, int] | None = None
        self.merging: SpeechSegment | None = None
        self.finished = False
        # with keep_speech, the raw speech (start, end) of each segment padded so far, in order: a live stream
        # (merging off, so one per segment handed out) reads and clears it to count pauses from where speech ended
        self.settled_speech: list[tuple[int, int]] = []

    # ------------------------------------------------------------------ public

    def push(self, probabilities: Iterable[float]) -> list[SpeechSegment]:
        """Consume the next windows' probabilities; returns the segments that became final, in order."""
        if self.finished:
            raise RuntimeError("push() after finish()")
        for probability in probabilities:
            self._step(float(probability))
        return self._settle(end_of_audio=None)

    def finish(self, audio_length_samples: int) -> list[SpeechSegment]:
        """The audio ended after ``audio_length_samples``: every remaining segment is final."""
        self.finished = True
        if self.current and audio_length_samples - self.current["start"] > self.min_speech:
            self.current["end"] = audio_length_samples
            self.raw.append(self.current)
        self.current = {}
        out = self._settle(end_of_audio=audio_length_samples)
        if self.merging is not None:
            out.append(self.merging)
            self.merging = None
        return out

    # ------------------------------------------------------------------ silero's loop, one window at a time

    def _step(self, probability: float) -> None:
        sample = WINDOW_SAMPLES * self.windows
        self.windows += 1
        if probability >= self.threshold and self.temp_end:
            silence = sample - self.temp_end
            if silence > self.min_silence_at_max_speech:
                self.possible_ends.append((self.temp_end, silence))
            self.temp_end = 0
            if self.next_start < self.prev_end:
                self.next_start = sample
        if probability >= self.threshold and not self.triggered:
            self.triggered = True
            self.current["start"] = sample
            return
        if self.triggered and sample - self.current["start"] > self.max_speech:
            self._cut_at_longest_pause(sample)
        if probability < self.neg_threshold and self.triggered:
            if not self.temp_end:
                self.temp_end = sample
            if sample - self.temp_end < self.min_silence:
                return
            self.current["end"] = self.temp_end
            if self.current["end"] - self.current["start"] > self.min_speech:
                self.raw.append(self.current)
            self._untrigger()

    def _cut_at_longest_pause(self, sample: int) -> None:
        # silero's default (use_max_poss_sil_at_max_speech=True) path; without a pause it cuts where it is
        if self.possible_ends:
            self.prev_end, duration = max(self.possible_ends, key=lambda end: end[1])
            self.current["end"] = self.prev_end
            self.raw.append(self.current)
            self.current = {}
            self.next_start = self.prev_end + duration
            if self.next_start < self.prev_end + sample:
                self.current["start"] = self.next_start
            else:
                self.triggered = False
            self.prev_end = self.next_start = self.temp_end = 0
            self.possible_ends = []
        else:  # (silero's legacy prev_end branch is unreachable here: prev_end is never left set on this path)
            self.current["end"] = sample
            self.raw.append(self.current)
            self._untrigger()

    def _untrigger(self) -> None:
        """Back to silero's initial state: a scan may restart here as if the file began now."""
        self.current = {}
        self.prev_end = self.next_start = self.temp_end = 0
        self.triggered = False
        self.possible_ends = []

    # ------------------------------------------------------------------ padding and merging

    def open_from(self) -> int | None:
        """The earliest sample where a segment not handed out yet may start (None once finished)."""
        if self.finished:
            return None
        if self.merging is not None:
            return self.merging.start
        return max(0, math.floor(self._next_speech_start() - self.pad))

    def speech_open(self) -> bool:
        """Speech has begun that is not handed out yet (a live stream's open utterance)."""
        return bool(self.raw or self.merging is not None or "start" in self.current)

    def speech_start(self) -> int | None:
        """Where the speech in progress started (None: no speech is going on now)."""
        return self.current.get("start")

    def tentative(self) -> tuple[SpeechSegment, tuple[int, int]] | None:
        """The speech that ended last and is not handed out yet, with its raw (start, end), padded as it will be if
        nothing but the speech going on now (if any) starts within two pads of its end; None when none waits. (At
        most one waits: a later confirmed speech settles the one before it.)"""
        if not self.raw or self.finished:
            return None
        speech = self.raw[-1]
        following = {"start": self.current["start"]} if "start" in self.current else None
        return self._padded(speech, following, None), (speech["start"], speech["end"])

    def _next_speech_start(self) -> int:
        """The earliest raw speech start not padded yet: a confirmed one, the one in progress, or the next window."""
        return self.raw[0]["start"] if self.raw else self._unconfirmed_start()

    def _unconfirmed_start(self) -> int:
        """Where the speech in progress started, or the next window when there is none."""
        return self.current.get("start", WINDOW_SAMPLES * self.windows)

    def _settle(self, end_of_audio: int | None) -> list[SpeechSegment]:
        """Pad every raw speech whose end padding is known (all of them at the end), then merge."""
        out: list[SpeechSegment] = []
        while self.raw and (len(self.raw) > 1 or end_of_audio is not None or self._alone_for_good(self.raw[0])):
            speech = self.raw.pop(0)
            following = self.raw[0] if self.raw else None
            padded = self._padded(speech, following, end_of_audio)
            if self.keep_speech:
                self.settled_speech.append((speech["start"], speech["end"]))
            self.previous_raw = speech
            self._merge(padded, out)
        if end_of_audio is None and self.merging is not None and self._merge_is_final():
            out.append(self.merging)
            self.merging = None
        return out

    def _alone_for_good(self, speech: dict[str, int]) -> bool:
        """The last confirmed speech: no later speech can start within two pads of its end, so its padding is
        settled (silero pads by half the pause only when the pause is shorter than that)."""
        return self._unconfirmed_start() - speech["end"] >= 2 * self.pad

    def _merge_is_final(self) -> bool:
        """No later segment can join the merge in progress: each starts too far after it (at least its raw start
        minus a pad) or ends too late (after its raw start)."""
        earliest = self._next_speech_start()
        return (math.floor(earliest - self.pad) - self.merging.end > self.merge_max_gap
                or earliest - self.merging.start >= self.merge_up_to)

    def _padded(self, speech: dict[str, int], following: dict[str, int] | None,
                end_of_audio: int | None) -> SpeechSegment:
        previous = self.previous_raw
        if previous is None:
            start = int(max(0, speech["start"] - self.pad))
        else:
            silence = speech["start"] - previous["end"]
            start = int(max(0, speech["start"] - (silence // 2 if silence < 2 * self.pad else self.pad)))
        if following is None:  # the last speech, or one that nothing can follow within two pads
            padded_end = speech["end"] + self.pad
            end = int(padded_end if end_of_audio is None else min(end_of_audio, padded_end))
        else:
            silence = following["start"] - speech["end"]
            # (silero clamps this end to the audio too, but the next speech starts after it: a no-op)
            end = speech["end"] + int(silence // 2) if silence < 2 * self.pad else int(speech["end"] + self.pad)
        return SpeechSegment(start=start, end=end)

    def _merge(self, segment: SpeechSegment, out: list[SpeechSegment]) -> None:
        last = self.merging
        if last is not None and segment.start - last.end <= self.merge_max_gap \
                and segment.end - last.start <= self.merge_up_to:
            self.merging = SpeechSegment(start=last.start, end=max(last.end, segment.end))
            return
        if last is not None:
            out.append(last)
        self.merging = segment
