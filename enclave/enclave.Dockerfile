# syntax=docker/dockerfile:1
# The enclave image: the worker, its runtime and the sealed model bundle, nothing
# else. nitro-cli build-enclave turns it into the EIF; every byte here, the ENV
# lines included, is measured into PCR0, which the key policies approve. Pin the
# base image by digest (python:3.11-slim@sha256:...) for a release, so that a
# rebuild measures the same.
#
#   docker build -f enclave/enclave.Dockerfile --build-arg BUNDLE=build/bundle .
#
# No network tools are installed: the enclave has no network, its only channel is
# vsock to the proxy on the parent instance. No secret is baked in: the model stays
# sealed until KMS releases its key to an attested request.
FROM python:3.11-slim

ARG BUNDLE
ARG HOSPITAL_KEY_ID=alias/obscura-hospital
ARG AWS_REGION=us-east-1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/obscura

# torch from the CPU wheel index (no CUDA in an enclave), the rest from PyPI.
COPY pyproject.toml docker/requirements.py ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "$(python requirements.py pyproject.toml --only torch)" \
    && python requirements.py pyproject.toml --without torch > requirements.txt \
    && pip install -r requirements.txt \
    && rm requirements.txt requirements.py

COPY shared ./shared
COPY services/__init__.py ./services/__init__.py
COPY services/enclave_worker ./services/enclave_worker
RUN pip install --no-deps . && rm -rf build *.egg-info \
    && pip uninstall --yes pip setuptools wheel

# The sealed bundle (manifest and ciphertext), from obscura model seal.
COPY ${BUNDLE} /opt/obscura/model

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin obscura
USER 10001:10001

# The worker's settings, measured with the image. A different setting is a
# different PCR0 and needs a fresh approval.
ENV OBSCURA_WORKER_ENVIRONMENT=production \
    OBSCURA_WORKER_TRANSPORT=vsock \
    OBSCURA_WORKER_LISTEN_PORT=5005 \
    OBSCURA_WORKER_KMS_RELAY_PORT=8000 \
    OBSCURA_WORKER_KMS_SCHEME=https \
    OBSCURA_WORKER_AWS_REGION=${AWS_REGION} \
    OBSCURA_WORKER_BUNDLE_DIR=/opt/obscura/model \
    OBSCURA_WORKER_HOSPITAL_KEY_ID=${HOSPITAL_KEY_ID} \
    OBSCURA_WORKER_SLOTS=2 \
    OBSCURA_WORKER_TORCH_THREADS=2

ENTRYPOINT ["python", "-m", "services.enclave_worker"]
