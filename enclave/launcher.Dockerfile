# syntax=docker/dockerfile:1
# The enclave launcher: nitro-cli and the EIF, for the proxy pod's launcher
# sidecar. Build after enclave/build-eif.sh:
#
#   docker build -f enclave/launcher.Dockerfile -t obscura-enclave-launcher .
FROM amazonlinux:2023

RUN dnf install --assumeyes aws-nitro-enclaves-cli \
    && dnf clean all

COPY obscura-worker.eif /opt/obscura/obscura-worker.eif
COPY enclave/run-enclave.sh /usr/local/bin/run-enclave.sh

ENTRYPOINT ["/usr/local/bin/run-enclave.sh"]
