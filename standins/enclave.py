"""``python -m standins.enclave``: the enclave worker on a developer machine.

The same worker code, with the simulated NSM in place of /dev/nsm. PCRs are
measured from the files this process actually runs (``standins.measure``), so a
worker started from an altered tree attests to different PCRs and KMS refuses it.
``OBSCURA_DEV_STATE_DIR`` holds the dev PKI; ``OBSCURA_DEV_DEBUG_MODE=1`` starts the
worker as a debug-mode enclave (all-zero PCRs).
"""

from __future__ import annotations

import os
from pathlib import Path

from services.enclave_worker.boot import run
from services.enclave_worker.settings import WorkerSettings
from shared.bundle import read_manifest
from standins.measure import measure_worker, pcr_bytes
from standins.nsm import DevPki, SimulatedNsm


def simulated_nsm(settings: WorkerSettings) -> SimulatedNsm:
    state = Path(os.environ.get("OBSCURA_DEV_STATE_DIR", ".obscura"))
    manifest = read_manifest(settings.bundle_dir).canonical_bytes()
    pcrs = pcr_bytes(measure_worker(bundle_manifest=manifest))
    debug = os.environ.get("OBSCURA_DEV_DEBUG_MODE", "") == "1"
    return SimulatedNsm(DevPki.load_or_create(state), pcrs, debug=debug)


if __name__ == "__main__":
    run(simulated_nsm)
