# syntax=docker/dockerfile:1
# The local stand-ins, for docker compose only: moto (S3 and KMS) behind the
# attested KMS gate, the provisioning of the dev keys and demo bundle, and the
# enclave worker with the simulated NSM (compose has no Nitro). Never deployed.
# It carries torch because the compose worker runs the model; the worker measures
# its own files, so it must run from this image, the one provisioning measured.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/obscura

COPY pyproject.toml docker/requirements.py ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "$(python requirements.py pyproject.toml --only torch)" \
    && python requirements.py pyproject.toml --without torch --extra dev \
        --only moto > requirements.txt \
    && python requirements.py pyproject.toml --without torch >> requirements.txt \
    && pip install -r requirements.txt \
    && rm requirements.txt requirements.py

COPY shared ./shared
COPY services ./services
COPY standins ./standins
COPY docker/compose_standins.py ./compose_standins.py
RUN pip install --no-deps . && rm -rf build *.egg-info

RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin obscura \
    && mkdir /state && chown 10001:10001 /state
USER 10001:10001

ENV OBSCURA_DEV_STATE_DIR=/state
# moto on 4566, the attested KMS gate on 4567; both bind 127.0.0.1 only, so the
# compose services that call them share this container's network namespace.
EXPOSE 4566 4567
HEALTHCHECK --interval=5s --timeout=3s --start-period=120s --retries=3 \
    CMD ["test", "-f", "/state/ready"]

ENTRYPOINT ["python", "compose_standins.py"]
