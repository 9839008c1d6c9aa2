"""Constants shared by the Ray-free core without importing torch or NeMo."""

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v2"
SAMPLE_RATE = 16000
