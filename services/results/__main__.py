"""``python -m services.results [serve|migrate]``."""

from __future__ import annotations

import asyncio
import sys

from services.results.db import migrate
from services.results.service import serve
from services.results.settings import ResultsSettings
from shared.logging import configure_logging, get_logger

USAGE = "usage: python -m services.results [serve|migrate]"


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "serve"
    if command not in {"serve", "migrate"}:
        print(USAGE, file=sys.stderr)
        return 2
    settings = ResultsSettings()
    configure_logging("results", level=settings.log_level)
    if command == "migrate":
        asyncio.run(migrate(settings.database_url.get_secret_value()))
        get_logger(__name__).info("migrations applied", revision="head")
        return 0
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
