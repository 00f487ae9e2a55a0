#!/usr/bin/env bash
# Build the enclave image with a sealed bundle, turn it into an EIF and record the
# PCRs nitro-cli prints, for the key policies:
#
#   enclave/build-eif.sh build/bundle
#   obscura key-policy vendor --pcrs enclave/pcrs.json ...
#
# Runs on a build host with docker and nitro-cli (aws-nitro-enclaves-cli).
set -euo pipefail

usage="usage: enclave/build-eif.sh BUNDLE_DIR [IMAGE_TAG]"
bundle="${1:?$usage}"
tag="${2:-obscura-worker:latest}"
root="$(cd "$(dirname "$0")/.." && pwd)"
output="$root/obscura-worker.eif"
pcrs="$root/enclave/pcrs.json"

cd "$root"
# The bundle is copied from the build context, so it must sit under the repository.
if [[ ! -d "$bundle" ]]; then
    echo "bundle folder $bundle does not exist; seal one with obscura model seal." >&2
    exit 2
fi

docker build \
    --file enclave/enclave.Dockerfile \
    --build-arg BUNDLE="$bundle" \
    --tag "$tag" \
    .

measurements="$(mktemp)"
trap 'rm -f "$measurements"' EXIT
nitro-cli build-enclave --docker-uri "$tag" --output-file "$output" | tee "$measurements"

# nitro-cli prints {"Measurements": {"HashAlgorithm": ..., "PCR0": ..., ...}};
# keep the PCRs only, in the shape obscura key-policy --pcrs reads.
python3 - "$measurements" "$pcrs" <<'PY'
import json
import sys

printed = json.load(open(sys.argv[1]))["Measurements"]
pcrs = {name: value.lower() for name, value in printed.items() if name.startswith("PCR")}
if set(pcrs.get("PCR0", "0")) == {"0"}:
    sys.exit("nitro-cli reported an all-zero PCR0; refusing to record it.")
with open(sys.argv[2], "w") as handle:
    json.dump(pcrs, handle, indent=2, sort_keys=True)
    handle.write("\n")
PY

echo "EIF $output; PCRs recorded in $pcrs" >&2
