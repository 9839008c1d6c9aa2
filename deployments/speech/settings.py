"""Every knob of the service, typed and documented once.

``serve_config.yaml`` passes these as the application's ``args``; environment variables with the ``PARAKEET_``
prefix override them (``PARAKEET_MODEL=/models/parakeet.nemo``, ``PARAKEET_VAD__THRESHOLD=0.6``), so a deployment
can be pointed at a local checkpoint without editing the file.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .parakeet_defaults import DEFAULT_MODEL


class VadSettings(BaseModel):
    """Silero VAD (the ONNX sequence model from the ``silero-vad`` package) and how its segments are shaped."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.5, gt=0, lt=1, description="speech probability that starts speech")
    neg_threshold: float | None = Field(None, description="probability that ends speech (default threshold-0.15)")
    min_speech_duration_ms: int = Field(
        100, ge=0, description="shorter bursts are dropped (silero's 250 dropped short words said alone)")
    min_silence_duration_ms: int = Field(30, ge=0, description="silence needed to end a segment (seed: 30)")
    speech_pad_ms: int = Field(120, ge=0, description="padding added on both sides of speech (seed: 120)")
    max_segment_s: float = Field(30.0, gt=1, description="longer speech is cut at its longest pause")
    merge_up_to_s: float = Field(
        12.0, ge=0, description="adjacent segments are merged while the result stays this short (0: never)")
    merge_max_gap_s: float = Field(1.5, ge=0, description="segments further apart than this are never merged")
    frames_per_call: int = Field(1024, ge=16, description="32 ms windows per ONNX call; the segments found in each "
                                                          "such block are handed to the Transcriber at once")
    threads: int = Field(1, ge=1, description="VAD threads per Segmenter replica (ONNX frees the GIL); give the "
                                              "replica threads x onnx_threads CPUs")
    onnx_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime threads inside each VAD call: the same "
                                                          "probabilities, one long file's VAD sooner on many-core "
                                                          "nodes (2 threads: -25 % on our 2-core machine)")
    parallel_chunk_s: float = Field(
        0.0, ge=0, description="0: exact sequential VAD. >0 (with threads > 1): files longer than 1.5x this run as "
                               "parallel chunks, each re-reading warmup_s before it; lower latency on long files, "
                               "but segment edges near chunk borders may move by a few windows")
    warmup_s: float = Field(10.0, ge=0, description="audio re-read before each parallel chunk")
    live_max_batch: int = Field(64, ge=1, description="live streams' VAD steps in one Segmenter call at most (an "
                                                      "Ingress sends its streams' steps of one tick together)")

    @model_validator(mode="after")
    def _merge_fits(self):
        if self.merge_up_to_s > self.max_segment_s:
            raise ValueError("vad.merge_up_to_s must not exceed vad.max_segment_s")
        return self


class LimitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_upload_mb: float = Field(200.0, gt=0, description="uploads larger than this get 413 (counted as they arrive)")
    max_audio_s: float = Field(4 * 3600.0, gt=0, description="decoded audio longer than this gets 413")
    min_audio_ms: float = Field(32.0, ge=0, description="shorter audio gets 400 (one VAD window)")
    max_channels: int = Field(8, ge=1, le=64, description="multichannel=true: files with more channels get 400")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class AdmissionSettings(BaseModel):
    """How much work one Ingress replica accepts; beyond it new requests get 429 with ``Retry-After`` at once."""

    model_config = ConfigDict(extra="forbid")

    max_requests: int = Field(96, ge=1, description="HTTP and handle requests in flight; keep it below the "
                                                    "Ingress's max_ongoing_requests so health checks always have a "
                                                    "slot")
    max_audio_s: float = Field(7200.0, gt=0, description="audio seconds of the requests in flight")
    long_file_s: float = Field(300.0, gt=0, description="a request with more audio than this is a long file")
    long_files_share: float = Field(0.75, gt=0, le=1, description="long files may fill at most this share of "
                                                                  "max_audio_s, so short requests still get in")
    retry_after_s: int = Field(2, ge=1, description="the shortest Retry-After a refused request gets (up to twice "
                                                   "this until this replica has finished audio to measure a rate)")
    max_retry_after_s: int = Field(30, ge=1, description="the longest: a refused request is told to come back when "
                                                         "the audio admitted before it is done, at the rate this "
                                                         "replica finished audio over the last 10 s, within these "
                                                         "bounds")

    @model_validator(mode="after")
    def _retry_after_bounds(self) -> "AdmissionSettings":
        if self.max_retry_after_s < self.retry_after_s:
            raise ValueError(f"admission.max_retry_after_s ({self.max_retry_after_s}) is below "
                             f"admission.retry_after_s ({self.retry_after_s})")
        return self


class TurnRules(BaseModel):
    """When a live stream's turn ends and how often its partials come: the service's defaults (``stream.*``), a
    stream's first message, or a mid-stream ``configure`` (Realtime: ``turn_detection``)."""

    model_config = ConfigDict(extra="forbid")

    end_of_utterance_ms: int = Field(
        500, ge=0, le=10000, description="a pause this long after the end of speech ends the turn (its final is "
                                         "sent); shorter pauses keep the turn open. Counted from where speech "
                                         "ended, not from its padded end, and never shorter than stream.final_tail_ms "
                                         "(the final includes that much audio after the speech)")
    partial_interval_ms: int = Field(1000, ge=100, le=10000, description="audio between partial results of the "
                                                                          "open turn")


class StreamSettings(BaseModel):
    """The live WebSocket streams (``/v1/audio/stream`` and the Realtime API's ``/v1/realtime``)."""

    model_config = ConfigDict(extra="forbid")

    max_streams: int = Field(64, ge=1, description="concurrent streams per Ingress replica; more are refused")
    partial_interval_ms: int = TurnRules.model_fields["partial_interval_ms"]
    end_of_utterance_ms: int = TurnRules.model_fields["end_of_utterance_ms"]
    partial_context_s: float = Field(
        0.5, ge=0, le=30, description="a partial of a long turn transcribes from this much audio before its committed "
                                      "words' end (the model's left context for the words after them). With "
                                      "partial_settle_s, what a partial of a long turn costs: 0.5 / 0.75 makes a "
                                      "29 s turn's model time per second 1.45x a 2 s turn's on a CPU (1 / 1: 1.6x), "
                                      "and commits a word that differs from the final a little more often (2.5 % "
                                      "against 2.1 %: docs/live.md)")
    partial_settle_s: float = Field(
        0.75, ge=0.1, le=10, description="a partial's word is committed (shown from then on, never taken back) once "
                                        "it ended this long before the end of the audio it was heard in (its right "
                                        "context); later partials start from there")
    first_pass: bool = Field(True, description="transcribe the open turn as soon as speech stops, so its final is "
                                               "ready when the pause (or the client) ends the turn; the finals are "
                                               "the same either way")
    final_tail_ms: int = Field(64, ge=0, le=1000, description="audio a turn's final keeps after its speech ends (at "
                                                              "most vad.speech_pad_ms, which pads the start). Silero "
                                                              "hears speech end ~80 ms after the last sound, so the "
                                                              "words are whole without the full pad, and the first "
                                                              "pass starts that much sooner (64: as few word errors "
                                                              "as 120 on the held-out set; 32 made more)")
    vad_end_lag_ms: int = Field(64, ge=0, le=500, description="a live turn's pause counts from this long before "
                                                              "the point where VAD says speech ended: Silero says so "
                                                              "late (its 32 ms windows and memory; on the held-out "
                                                              "set 95 ms after the last sound at the median, 34 ms "
                                                              "at p10). The final's audio still runs to VAD's end "
                                                              "plus final_tail_ms; 0 counts from VAD's end")
    min_step_ms: int = Field(64, ge=0, le=1000, description="the live VAD step clock: a stream's audio goes through "
                                                           "VAD once a tick of this period (a real-time client's "
                                                           "20 ms frames: a few per step), every stream of an Ingress "
                                                           "on the same ticks, so their steps go to the Segmenter "
                                                           "together. A finalize, the end, a stream 4 ticks behind, "
                                                           "or one whose audio completes its turn's pause steps at "
                                                           "once")
    step_window_ms: int = Field(4, ge=0, le=100, description="how long an Ingress gathers its streams' VAD steps "
                                                             "before sending them as one Segmenter call (steps of "
                                                             "one tick reach it within a few milliseconds)")
    file_segments_per_call: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto", description="while a Transcriber replica has live work (any in its last 10 s), a file's segments per "
                            "model call on it, so a turn's final waits behind at most one such call. auto: 1 on CPU "
                            "(a call of four 12 s segments takes ~1 s on one core) and the whole batch on a GPU (a "
                            "call takes tens of ms there, and batching is what makes it fast)")
    max_buffered_s: float = Field(60.0, gt=1, description="audio a stream may have waiting; more is an error")
    max_frame_bytes: int = Field(1 << 20, gt=0, description="largest binary frame (or Realtime append) accepted")
    max_commit_s: float = Field(600.0, gt=0, description="Realtime manual-commit sessions: audio the input buffer "
                                                         "may hold before a commit")

    @property
    def turn_rules(self) -> TurnRules:
        return TurnRules(end_of_utterance_ms=self.end_of_utterance_ms, partial_interval_ms=self.partial_interval_ms)


class ModelSpec(BaseModel):
    """One checkpoint the service serves, chosen per request by its ``id`` (the request's ``model`` field)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="the name clients use (the request's model field, /v1/models)")
    source: str = Field(min_length=1, description="HF id or path to a .nemo file")
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1,
                                 description="ISO-639-1 codes the model transcribes (a request's language must be "
                                             "one of them)")

    @model_validator(mode="after")
    def _lower_case_languages(self):
        self.languages = [language.strip().lower() for language in self.languages]
        return self


class BatchSettings(BaseModel):
    """The Transcriber's batching: its ``user_config`` in serve_config.yaml, so it can be retuned on a running
    service (``serve deploy``) without a restart; a bigger batch is warmed up before it is used."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(4, ge=1, le=256, description="largest batch the Transcriber forms (seed: 4)")
    batch_ms: float = Field(15.0, ge=0, le=1000, description="batching window in ms (seed: 15)")


class KeytermSettings(BaseModel):
    """Phrase boosting (``keyterms``): NeMo's boosting tree in the TDT label-looping decoder, one tree per term set,
    chosen per item inside a batch."""

    model_config = ConfigDict(extra="forbid")

    max_terms: int = Field(1000, ge=1, le=20000, description="terms one request or stream may boost")
    max_term_chars: int = Field(50, ge=1, le=500, description="characters in one term")
    boost: float = Field(0.5, gt=0, description="default boost weight (the tree's weight added to the decoder's "
                                                "log-probabilities; chosen on data: bench/results/keyterms-*)")
    max_boost: float = Field(3.0, gt=0, description="largest boost a request may ask for (keyterms_boost)")
    trees_per_model: int = Field(256, ge=1, description="term sets whose trees a replica keeps per model (least "
                                                        "recently used dropped): a set's tree is built once")

    @model_validator(mode="after")
    def _boost_in_range(self):
        if self.boost > self.max_boost:
            raise ValueError("keyterms.boost must not exceed keyterms.max_boost")
        return self


class JobSettings(BaseModel):
    """Transcription jobs (``/v1/audio/transcriptions/jobs``): asynchronous, kept in ``storage`` so that any Ingress
    replica can answer for any job and a job outlives the replica (and the application) that started it."""

    model_config = ConfigDict(extra="forbid")

    storage: str = Field("~/.cache/parakeet/jobs", description="directory holding every job's audio, finished "
                                                               "segments and result. On a multi-node cluster it "
                                                               "must be one shared filesystem (NFS, EFS, a "
                                                               "ReadWriteMany volume) mounted at this path on every "
                                                               "node that runs an Ingress replica")
    url_prefixes: list[str] = Field(default_factory=list, description="the only URL prefixes a job's ``url`` may be "
                                                                      "fetched from and a ``webhook_url`` may point "
                                                                      "at (empty: neither is allowed)")
    webhook_secret: Optional[SecretStr] = Field(None, description="Standard Webhooks signing secret, ``whsec_`` + "
                                                                  "base64 (env PARAKEET_JOBS__WEBHOOK_SECRET); "
                                                                  "without it a job with a webhook_url gets 400")
    webhook_retry_s: list[float] = Field(default_factory=lambda: [5.0, 15.0, 30.0, 60.0, 120.0], min_length=0,
                                         description="waits between a webhook's deliveries: a try, then one more "
                                                     "after each wait (6 tries over 3m50s by default) until one is "
                                                     "answered 2xx; a 4xx answer (but 408 and 429) stops them")
    webhook_timeout_s: float = Field(10.0, gt=0, description="one webhook delivery's (and a URL fetch's connect) "
                                                             "timeout")
    max_unfinished: int = Field(1000, ge=1, description="jobs queued or running in the whole service; more get 429 "
                                                        "with Retry-After (the jobs' own admission budget)")
    jobs_per_replica: int = Field(2, ge=1, description="jobs one Ingress replica runs at once")
    segments_in_flight: int = Field(32, ge=1, description="a running job's segments at the Transcribers at once "
                                                         "(they run behind live and synchronous work)")
    segments_per_model_call: int = Field(1, ge=1, le=4, description="a job's segments per model call while other "
                                                                    "work has come to the replica in the last 2 s "
                                                                    "(at most the Transcriber's batch): the longest "
                                                                    "that live or synchronous work waits behind a "
                                                                    "job is one such call. 4 on a GPU, where a call "
                                                                    "takes milliseconds. Jobs alone on a replica "
                                                                    "run whole batches")
    lease_s: float = Field(30.0, ge=1, description="a running job whose replica has not renewed its claim for this "
                                                   "long is taken over by another replica (a dead Ingress)")
    poll_s: float = Field(2.0, gt=0, description="how often an idle replica looks for jobs to run or resume")
    retry_s: float = Field(10.0, gt=0, description="a job whose run failed for a passing reason (a replica died "
                                                   "twice under a segment, the service at capacity) runs again after "
                                                   "this long; its finished segments are kept")
    result_ttl_s: float = Field(7 * 86400.0, gt=0, description="finished jobs (and their audio and result) are "
                                                               "deleted this long after they finished")


# The model names OpenAI's and Deepgram's clients send by default (their SDKs, Pipecat's and LiveKit's plugins) ->
# the default served model.
DEFAULT_MODEL_ALIASES = {name: "" for name in (
    "whisper-1", "gpt-transcribe", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize",
    "gpt-realtime-whisper", "gpt-live-transcribe", "nova-3", "nova-3-general", "nova-2", "nova-2-general", "nova-2-phonecall",
    "nova-2-meeting", "nova", "enhanced", "base")}


class AppSettings(BaseSettings):
    """The application's arguments (``args:`` in serve_config.yaml)."""

    model_config = SettingsConfigDict(env_prefix="PARAKEET_", env_nested_delimiter="__", extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="HF id or path to a .nemo file (env PARAKEET_MODEL wins); the "
                                                  "one model served when ``models`` is empty")
    model_name: str = Field("parakeet-tdt-0.6b-v2", description="that model's id (/v1/models, the model field)")
    models: list[ModelSpec] = Field(
        default_factory=list, description="several checkpoints, chosen per request by id; the first is the default "
                                          "(env PARAKEET_MODELS as JSON). Empty: just ``model`` as ``model_name``")
    model_aliases: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_MODEL_ALIASES),
        description="names clients send -> a served model's id (\"\": the default model). Shipped: OpenAI's and "
                    "Deepgram's common names, so their SDKs and plugins work unchanged; names neither served nor "
                    "aliased get 404")
    max_models_per_replica: int = Field(
        2, ge=1, description="models one Transcriber replica holds at once (least recently used evicted)")
    confidence: bool = Field(True, description="per-token probabilities from the decoder's own pass (word "
                                               "probability / confidence, logprobs)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when the replica has a GPU")
    use_bf16: bool = Field(True, description="run encoder/decoder in bf16 on GPU")
    local_attention_above_s: float = Field(
        600.0, ge=0, description="inputs longer than this use local attention (memory); 0 disables")
    transcriber_gpus: Literal["auto"] | float = Field(
        "auto", description="GPUs per Transcriber replica; auto: 1 when the cluster has GPUs, else 0")
    transcriber_cpus: float = Field(1.0, gt=0, description="CPUs per Transcriber replica (sets torch threads)")
    max_batch_audio_s: float = Field(
        1200.0, gt=0, description="a model batch holds at most this much (padded) audio; longer inputs that arrive "
                                  "together run one after the other, which bounds the Transcriber's memory")
    warmup: bool = Field(True, description="run the largest batch once at start-up (CUDA graphs, allocator)")
    vad: VadSettings = Field(default_factory=VadSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    api_key: Optional[SecretStr] = Field(None, description="when set (PARAKEET_API_KEY), every route but /healthz "
                                                           "needs Authorization: Bearer <key> or X-API-Key")
    cors_origins: list[str] = Field(default_factory=list, description="origins browsers may call from (CORS off "
                                                                      "when empty; [\"*\"]: any)")
    stream: StreamSettings = Field(default_factory=StreamSettings)
    keyterms: KeytermSettings = Field(default_factory=KeytermSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    request_timeout_s: float = Field(600.0, gt=0, description="a request still running after this gets 503")

    @model_validator(mode="after")
    def _unique_model_ids(self):
        ids = [spec.id for spec in self.served_models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"model ids must be unique: {ids}")
        wrong = {alias: target for alias, target in self.model_aliases.items() if target and target not in ids}
        if wrong:
            raise ValueError(f"model_aliases point at models not served ({wrong}); served: {ids}")
        return self

    @property
    def served_models(self) -> list[ModelSpec]:
        """Every model served, the default first."""
        return self.models or [ModelSpec(id=self.model_name, source=self.model)]

    @property
    def default_model(self) -> ModelSpec:
        return self.served_models[0]

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        # The environment beats the config file: PARAKEET_MODEL must be able to override serve_config.yaml.
        return env_settings, init_settings
