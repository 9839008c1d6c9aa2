"""Decode and validate audio once: anything FFmpeg (PyAV) reads becomes float32 16 kHz mono."""

from __future__ import annotations

import io

import numpy as np

from .errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia
from .parakeet_defaults import SAMPLE_RATE
from .settings import LimitSettings

# A container that promises more audio than decodes (by more than this) was cut short.
TRUNCATION_TOLERANCE_S = 0.1


def decode(data: bytes, max_seconds: float | None = None, channels: bool = False) -> np.ndarray:
    """Any audio (or video with audio) file -> float32 16 kHz mono (``channels``: each channel kept, an array of
    shape (channels, samples)). Raises 400/413/415 errors a user can act on.

    Decoding stops as soon as the audio passes ``max_seconds`` (413): a few kilobytes of compressed silence can
    promise hours of samples, which must not be decoded into memory first and measured afterwards."""
    import av

    if not data:
        raise InvalidRequest("The uploaded audio file is empty.", code="empty_audio")
    _check_wav_length(data)
    native = _decode_wav_16k(data, max_seconds, channels)
    if native is not None:
        return native
    max_samples = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise UnsupportedMedia(f"Could not read the upload as audio ({_short(exc)}). Send a WAV, FLAC, MP3, OGG, "
                               "M4A, WebM or any other format FFmpeg decodes.", code="undecodable_audio") from None
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise UnsupportedMedia("The upload has no audio stream.", code="no_audio_stream")
        # planar float keeps the channels apart (one row each); mono mixes them down as FFmpeg does
        layout = _layout(stream) if channels else "mono"
        resampler = av.AudioResampler(format="fltp" if channels else "flt", layout=layout, rate=SAMPLE_RATE)
        declared_s = _declared_duration_s(container, stream)
        if max_seconds is not None and declared_s is not None and declared_s > max_seconds + 1:
            raise _too_long(declared_s, max_seconds)
        chunks: list[np.ndarray] = []
        decoded = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(_frame_samples(out, channels))
                    decoded += chunks[-1].shape[-1]
                if max_samples is not None and decoded > max_samples:
                    raise _too_long(decoded / SAMPLE_RATE, max_seconds)
            for out in resampler.resample(None):
                chunks.append(_frame_samples(out, channels))
        except (av.error.FFmpegError, ValueError) as exc:
            raise UnsupportedMedia(f"The audio could not be decoded ({_short(exc)}); the file may be damaged.",
                                   code="undecodable_audio") from None
    empty = np.zeros((stream.channels, 0) if channels else 0, np.float32)
    audio = np.concatenate(chunks, axis=-1).astype(np.float32, copy=False) if chunks else empty
    decoded_s = audio.shape[-1] / SAMPLE_RATE
    if declared_s is not None and decoded_s + TRUNCATION_TOLERANCE_S < declared_s * 0.98:
        raise UnsupportedMedia(f"The audio file is truncated: its header promises {declared_s:.2f} s but only "
                               f"{decoded_s:.2f} s could be decoded. Upload the complete file.",
                               code="truncated_audio")
    return np.ascontiguousarray(audio)


def _layout(stream) -> str:
    """The stream's channel layout by name (FFmpeg's default for its channel count when it declares none)."""
    try:
        return stream.layout.name
    except (AttributeError, ValueError):
        return {1: "mono", 2: "stereo"}.get(stream.channels) or f"{stream.channels}c"


def _frame_samples(frame, channels: bool) -> np.ndarray:
    samples = frame.to_ndarray()
    return samples.reshape(samples.shape[0], -1) if channels else samples.reshape(-1)


def _too_long(seconds: float, max_seconds: float) -> PayloadTooLarge:
    return PayloadTooLarge(f"The audio is over {seconds:.0f} s long; the maximum is {max_seconds:g} s. Split it "
                           "and send the parts.", code="audio_too_long")


def _decode_wav_16k(data: bytes, max_seconds: float | None = None, channels: bool = False) -> np.ndarray | None:
    """What most API clients send, a 16 kHz WAV (mono, or any channels when they are kept), read straight through
    libsndfile: the same samples as FFmpeg gives, ~10x faster (1 ms for a minute). Anything else (other rates, other
    containers, or a WAV libsndfile cannot read) returns None and goes through FFmpeg."""
    import soundfile

    if data[:4] not in (b"RIFF", b"RIFX"):
        return None
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as wav:
            if wav.samplerate != SAMPLE_RATE or (wav.channels != 1 and not channels):
                return None
            if max_seconds is not None and wav.frames > max_seconds * SAMPLE_RATE:
                raise _too_long(wav.frames / SAMPLE_RATE, max_seconds)
            if not channels:
                return wav.read(dtype="float32")
            return np.ascontiguousarray(wav.read(dtype="float32", always_2d=True).T)
    except (soundfile.LibsndfileError, RuntimeError, ValueError):
        return None


def _check_wav_length(data: bytes) -> None:
    """FFmpeg clamps a WAV's length to the bytes present, so compare the RIFF header's promise ourselves."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return
    order = "little" if data[:4] == b"RIFF" else "big"
    position = 12
    while position + 8 <= len(data):
        chunk, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], order)
        if chunk == b"data":
            available = len(data) - position - 8
            if size not in (0, 0xFFFFFFFF) and size > available:  # 0 / max: a streamed WAV of unknown length
                raise UnsupportedMedia(f"The audio file is truncated: its header promises {size} bytes of audio "
                                       f"but only {available} arrived. Upload the complete file.",
                                       code="truncated_audio")
            return
        position += 8 + size + (size & 1)


def _declared_duration_s(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def from_array(samples, sample_rate: int | None, channels: bool = False) -> np.ndarray:
    """A caller's waveform (1-D mono, or 2-D: [n, channels], or [channels, n] when the first axis is the shorter)
    at ``sample_rate`` -> float32 16 kHz mono (``channels``: shape (channels, samples), each kept)."""
    import soxr

    array = np.asarray(samples)
    if array.dtype.kind not in "fiu":
        raise InvalidRequest(f"Audio samples must be numbers, not {array.dtype}.", code="invalid_audio_array")
    if sample_rate is None:
        raise InvalidRequest("sample_rate is required with a raw sample array.", code="missing_sample_rate")
    if not 1000 <= int(sample_rate) <= 384000:
        raise InvalidRequest(f"sample_rate {sample_rate} is out of range (1000..384000).", code="invalid_sample_rate")
    if array.dtype.kind in "iu":
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    array = array.astype(np.float32, copy=False)
    if array.ndim == 2 and array.shape[0] < array.shape[1]:
        array = array.T  # [channels, n] -> [n, channels]
    if array.ndim == 2 and not channels:
        array = array.mean(axis=1)
    if array.ndim == 1 and channels:
        array = array[:, None]
    if array.ndim != (2 if channels else 1):
        raise InvalidRequest(f"Expected mono samples or [samples, channels], got an array of shape {array.shape}.",
                             code="invalid_audio_array")
    if not np.isfinite(array).all():
        raise InvalidRequest("The audio contains NaN or infinite samples.", code="invalid_audio_array")
    if int(sample_rate) != SAMPLE_RATE and array.size:
        array = soxr.resample(array, int(sample_rate), SAMPLE_RATE).astype(np.float32)
    return np.ascontiguousarray(array.T if channels else array)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM bytes -> float32 in [-1, 1)."""
    if len(data) % 2:
        raise InvalidRequest("PCM16 data must have an even number of bytes.", code="invalid_frame")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian 16-bit PCM bytes (what the live stream takes)."""
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


class Resampler:
    """Streaming resampling to 16 kHz for live clients that send another rate (state kept across frames)."""

    def __init__(self, rate: int):
        import soxr

        self.stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32") if rate != SAMPLE_RATE else None

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return samples
        return self.stream.resample_chunk(samples, last=last)


def validate(audio: np.ndarray, limits: LimitSettings) -> float:
    """Check the decoded audio (mono, or (channels, samples)) against the limits; returns its duration in seconds."""
    duration = audio.shape[-1] / SAMPLE_RATE
    if audio.ndim == 2 and len(audio) > limits.max_channels:
        raise InvalidRequest(f"The audio has {len(audio)} channels; multichannel transcription takes at most "
                             f"{limits.max_channels}. Mix it down (leave out multichannel) or split it.",
                             code="too_many_channels")
    if audio.shape[-1] == 0:
        raise InvalidRequest("The audio decodes to no samples.", code="empty_audio")
    if not np.isfinite(audio).all():
        raise InvalidRequest("The audio contains NaN or infinite samples.", code="invalid_audio")
    if duration * 1000 < limits.min_audio_ms:
        raise InvalidRequest(f"The audio is {duration * 1000:.1f} ms long; the minimum is "
                             f"{limits.min_audio_ms:g} ms.", code="audio_too_short")
    if duration > limits.max_audio_s:
        raise PayloadTooLarge(f"The audio is {duration:.0f} s long; the maximum is {limits.max_audio_s:g} s. "
                              "Split it and send the parts.", code="audio_too_long")
    return duration


def _short(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
