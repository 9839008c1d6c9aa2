"""Decoding and validation: every accepted format becomes float32 16 kHz mono; every bad input a clear error."""

import io

import av
import numpy as np
import pytest

from deployments.speech import audio
from deployments.speech.errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia
from deployments.speech.settings import LimitSettings
from tests.helpers import encode

TONE = (0.3 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)).astype(np.float32)  # 1 s at 48 kHz


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", None), ("OGG", "VORBIS")])
def test_decodes_formats_to_16k_mono(fmt, subtype):
    stereo = np.stack([TONE, TONE * 0.5], axis=1)
    decoded = audio.decode(encode(stereo, fmt, 48000, subtype))
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) - 16000) < 400
    spectrum = np.abs(np.fft.rfft(decoded[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 5  # the tone survives resampling


def test_decodes_mp3_made_by_ffmpeg():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as out:
        stream = out.add_stream("mp3", rate=44100, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.tile(TONE[:44100], 1)[None, :], format="flt", layout="mono")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert abs(len(audio.decode(buffer.getvalue())) - 16000) < 1600


@pytest.mark.parametrize("payload,error,needle", [
    (b"", InvalidRequest, "empty"),
    (b"hello, definitely not audio" * 10, UnsupportedMedia, "audio"),
])
def test_rejects_unreadable(payload, error, needle):
    with pytest.raises(error, match=needle):
        audio.decode(payload)


def test_rejects_truncated_wav():
    wav = encode(TONE, "WAV", 48000)
    with pytest.raises(UnsupportedMedia, match="truncated"):
        audio.decode(wav[: len(wav) // 2])


def test_from_array_resamples_and_mixes_down():
    samples = (np.stack([TONE, TONE], axis=1) * 32767).astype(np.int16)
    out = audio.from_array(samples, 48000)
    assert out.dtype == np.float32 and out.ndim == 1 and len(out) == 16000
    assert 0.25 < np.abs(out).max() < 0.35


@pytest.mark.parametrize("samples,rate,needle", [
    (np.zeros(10, np.float32), None, "sample_rate is required"),
    (np.array([np.nan] * 100, np.float32), 16000, "NaN"),
    (np.zeros((2, 3, 4), np.float32), 16000, "mono"),
    (np.array(["a"]), 16000, "numbers"),
])
def test_from_array_rejects(samples, rate, needle):
    with pytest.raises(InvalidRequest, match=needle):
        audio.from_array(samples, rate)


def test_validate_limits():
    limits = LimitSettings(max_audio_s=2, min_audio_ms=32)
    assert audio.validate(np.zeros(16000, np.float32), limits) == 1.0
    with pytest.raises(InvalidRequest, match="minimum is 32 ms"):
        audio.validate(np.zeros(400, np.float32), limits)
    with pytest.raises(PayloadTooLarge, match="maximum is 2 s"):
        audio.validate(np.zeros(16000 * 3, np.float32), limits)
    with pytest.raises(InvalidRequest, match="no samples"):
        audio.validate(np.zeros(0, np.float32), limits)


def test_pcm16():
    data = np.array([0, 16384, -32768], "<i2").tobytes()
    assert audio.pcm16_to_float(data).tolist() == [0.0, 0.5, -1.0]
    with pytest.raises(InvalidRequest):
        audio.pcm16_to_float(b"\x00\x01\x02")


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT", "PCM_U8"])
def test_16k_mono_wav_fast_path_gives_ffmpegs_samples(subtype, monkeypatch):
    speechlike = (0.4 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)).astype(np.float32)
    wav = encode(speechlike, "WAV", 16000, subtype)
    fast = audio.decode(wav)
    monkeypatch.setattr(audio, "_decode_wav_16k", lambda data, max_seconds=None, channels=False: None)  # force the FFmpeg path
    through_ffmpeg = audio.decode(wav)
    monkeypatch.undo()
    assert audio._decode_wav_16k(wav) is not None  # so `fast` came from libsndfile
    assert fast.dtype == np.float32 and len(fast) == len(through_ffmpeg) == 16000
    np.testing.assert_allclose(fast, through_ffmpeg, atol=1e-6)


def test_nan_and_inf_samples_are_refused():
    samples = np.zeros(16000, np.float32)
    samples[100] = np.nan
    for fmt, subtype in (("WAV", "FLOAT"), ("WAV", "DOUBLE")):
        decoded = audio.decode(encode(samples, fmt, subtype=subtype))
        with pytest.raises(InvalidRequest, match="NaN or infinite"):
            audio.validate(decoded, LimitSettings())


def test_decoding_stops_once_the_audio_is_too_long():
    # ten minutes of silence compress to a few kilobytes, but would decode to 38 MB of samples
    silence = np.zeros(16000 * 600, np.float32)
    for fmt, rate in (("FLAC", 16000), ("FLAC", 8000), ("WAV", 16000)):  # libsndfile, and FFmpeg (8 kHz)
        data = encode(silence[: 600 * rate], fmt, sample_rate=rate)
        with pytest.raises(PayloadTooLarge, match="maximum is 60 s"):
            audio.decode(data, max_seconds=60)
    assert len(audio.decode(encode(silence[:16000 * 30], "FLAC"), max_seconds=60)) == 16000 * 30


@pytest.mark.parametrize("fmt,rate", [("WAV", 16000), ("FLAC", 16000), ("WAV", 44100), ("FLAC", 48000)])
def test_channels_kept_apart_equal_each_channel_decoded_alone(fmt, rate):
    """multichannel: each row is what that channel gives as a mono file of the same format (libsndfile for
    16 kHz WAV, FFmpeg for the rest)."""
    rng = np.random.default_rng(3)
    stereo = (rng.standard_normal((rate, 3)) * 0.1).astype(np.float32)
    kept = audio.decode(encode_any(stereo, rate, fmt), channels=True)
    assert kept.shape[0] == 3 and kept.dtype == np.float32
    for channel in range(3):
        alone = audio.decode(encode_any(stereo[:, channel], rate, fmt))
        assert np.abs(kept[channel] - alone).max() <= 1e-6


def test_too_many_channels_are_refused_naming_the_limit():
    limits = LimitSettings(max_channels=2)
    with pytest.raises(InvalidRequest, match="at most 2"):
        audio.validate(np.zeros((3, 16000), np.float32), limits)
    assert audio.validate(np.zeros((2, 16000), np.float32), limits) == 1.0


def encode_any(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()
