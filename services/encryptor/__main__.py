"""``python -m services.encryptor``: serve the encryptor with uvicorn."""

from __future__ import annotations

import uvicorn

from services.encryptor.app import create_app
from services.encryptor.settings import EncryptorSettings
from shared.logging import configure_logging


def main() -> None:
    settings = EncryptorSettings()
    configure_logging("encryptor", level=settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
