"""``python -m services.enclave_worker``: the worker inside a Nitro Enclave."""

from services.enclave_worker.boot import run
from shared.nsm import DeviceNsm

if __name__ == "__main__":
    run(lambda _settings: DeviceNsm.open())
