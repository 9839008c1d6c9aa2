# The service's container image: CUDA runtime + Python 3.12 + exactly what `make install` installs (EXTRAS= : the
# serving path only, no test or benchmark tools). The cluster manifests (configs/) run this image.
#   docker build -t parakeet-serve:latest .
#   docker run --gpus all -p 8000:8000 -p 8080:8080 -v ~/.cache/huggingface:/root/.cache/huggingface parakeet-serve
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv make ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml Makefile README.md serve_config.yaml ./
COPY deployments deployments
# the same Makefile target as a developer machine: same interpreter choice, same torch pin, same package pins
RUN make install PYTHON=python3.12 VENV=/app/.venv EXTRAS= PIP_CACHE_DIR=/tmp/pip-cache && rm -rf /tmp/pip-cache
ENV PATH=/app/.venv/bin:$PATH

# 8000: the API; 8080: Prometheus metrics (Ray's metrics export port); 8265: the Ray dashboard; 6379: Ray's GCS
EXPOSE 8000 8080 8265 6379
# One machine: `make serve` (preflight, a one-node Ray with metrics on 8080, the app). KubeRay and the cluster
# launcher replace this command with their own `ray start`.
CMD ["make", "serve", "PYTHON=python3.12", "VENV=/app/.venv", "EXTRAS="]
