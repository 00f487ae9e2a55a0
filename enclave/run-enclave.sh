#!/usr/bin/env bash
# Start the worker enclave on the parent instance and keep it for as long as this
# script runs; SIGTERM terminates the enclave. Used by the proxy pod's launcher
# sidecar and by hand on a plain EC2 parent:
#
#   ENCLAVE_CPU_COUNT=2 ENCLAVE_MEMORY_MIB=4096 enclave/run-enclave.sh
#
# Never passes --debug-mode: a debug enclave reports all-zero PCRs, which no key
# policy approves, and its console would expose the worker's memory-side logs.
set -euo pipefail

eif="${ENCLAVE_EIF_PATH:-/opt/obscura/obscura-worker.eif}"
cpus="${ENCLAVE_CPU_COUNT:-2}"
memory="${ENCLAVE_MEMORY_MIB:-4096}"
# Must match the proxy's OBSCURA_PROXY_WORKER_CID.
cid="${ENCLAVE_CID:-16}"

if [[ ! -f "$eif" ]]; then
    echo "EIF $eif does not exist; build it with enclave/build-eif.sh." >&2
    exit 2
fi

terminate() {
    nitro-cli terminate-enclave --all || true
    exit 0
}
trap terminate TERM INT

# An enclave left over from a killed launcher would hold the CID and the memory.
nitro-cli terminate-enclave --all >/dev/null 2>&1 || true
nitro-cli run-enclave \
    --eif-path "$eif" \
    --cpu-count "$cpus" \
    --memory "$memory" \
    --enclave-cid "$cid"

# Stay up while the enclave runs, so the pod sees it die.
while nitro-cli describe-enclaves | grep -q '"State": "RUNNING"'; do
    sleep 5 &
    wait $!
done
echo "enclave $cid is no longer running." >&2
exit 1
