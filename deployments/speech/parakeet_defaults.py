"""Constants shared by the Ray-free core without importing torch or NeMo."""

from pathlib import Path

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v2"
SAMPLE_RATE = 16000


def is_local_model(source: str) -> bool:
    """Whether a model source names a local file (else a Hugging Face id, or a NeMo pretrained name): one rule for
    the preflight and the loader, so a missing local path is reported as a missing file, never looked up on the
    hub. A ``.nemo`` name, an absolute or relative path, or anything that exists here is local."""
    return source.endswith(".nemo") or source.startswith(("/", ".", "~")) or Path(source).exists()
