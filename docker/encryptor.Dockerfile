# syntax=docker/dockerfile:1
# The encryptor: seals uploads under a hospital data key (internal only).
# Build from the repository root: docker build -f docker/encryptor.Dockerfile .
# No secret is baked in: tokens, broker and database URLs arrive as environment at
# run time (compose env_file, Kubernetes Secret references).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/obscura

# Dependencies first, in their own layer; torch is left out (only the enclave runs
# a model).
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py pyproject.toml --without torch > requirements.txt \
    && pip install -r requirements.txt \
    && rm requirements.txt requirements.py

COPY shared ./shared
COPY services/__init__.py ./services/__init__.py
COPY services/encryptor ./services/encryptor
RUN pip install --no-deps . && rm -rf build *.egg-info

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin obscura
USER 10001:10001

# Listen on every interface of the container; the port is the settings' default.
ENV OBSCURA_ENCRYPTOR_HOST=0.0.0.0
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2)"]

ENTRYPOINT ["python", "-m", "services.encryptor"]
