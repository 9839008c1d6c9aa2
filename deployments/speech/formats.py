"""Render a ``TranscriptionResult`` in each OpenAI ``response_format`` and the old server's ``/transcribe`` form."""

from __future__ import annotations

from typing import Literal, get_args

from .schemas import Segment, TranscriptionResult

ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)
TIMED_FORMATS = ("verbose_json", "srt", "vtt")  # the formats with segment times: only these call the Aligner
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


def clock(seconds: float, decimal: str) -> str:
    millis = max(0, int(round(seconds * 1000)))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def srt(segments: list[Segment]) -> str:
    blocks = [f"{i}\n{clock(s.start, ',')} --> {clock(s.end, ',')}\n{_cue(s, '[channel {}] {}')}\n"
              for i, s in enumerate(segments, 1)]
    return "\n".join(blocks)


def vtt(segments: list[Segment]) -> str:
    # multichannel: WebVTT's voice span names the channel (players show it as the speaker)
    blocks = [f"{clock(s.start, '.')} --> {clock(s.end, '.')}\n{_cue(s, '<v channel {}>{}</v>')}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def _cue(segment: Segment, labelled: str) -> str:
    return segment.text if segment.channel is None else labelled.format(segment.channel, segment.text)


def render(result: TranscriptionResult, response_format: str, granularities: set[str]) -> dict | str:
    """JSON-able dict for json formats, str for text formats."""
    if response_format == "json":
        body = {"text": result.text}
        if result.channels is not None:  # multichannel=true
            body["channels"] = [c.model_dump() for c in result.channels]
        if result.logprobs is not None:  # include[]=logprobs
            body["logprobs"] = [p.model_dump() for p in result.logprobs]
        return body
    if response_format == "text":  # (multichannel: every channel's words, in time order, as in json's text)
        return result.text + "\n"
    if response_format == "srt":
        return srt(result.segments)
    if response_format == "vtt":
        return vtt(result.segments)
    body = result.model_dump(exclude_none=True)  # word probabilities only when confidence is on
    # OpenAI returns only the granularities asked for (segments by default).
    if granularities and "segment" not in granularities:
        body.pop("segments")
    if "word" not in granularities:
        body.pop("words")
    return body


def legacy(result: TranscriptionResult, include_timestamps: bool) -> dict:
    """The old server's ``/transcribe`` response."""
    timestamps = None
    if include_timestamps:
        timestamps = {
            "words": [{"text": w.word, "start": w.start, "end": w.end,
                       **({} if w.probability is None else {"confidence": w.probability}),
                       **({} if w.channel is None else {"channel": w.channel})} for w in result.words],
            "segments": [{"text": s.text, "start": s.start, "end": s.end,
                          **({} if s.channel is None else {"channel": s.channel})} for s in result.segments],
        }
    body = {"text": result.text, "timestamps": timestamps}
    if result.channels is not None:
        body["channels"] = [c.model_dump() for c in result.channels]
    return body
