"""moto's server mode on 127.0.0.1: the S3 and KMS stand-in behind the gate.

``MotoServer`` runs moto in a background thread of the calling process (fast for
tests); ``python -m standins.moto_server --port N`` runs it in the foreground for
``obscura dev up``. Either way it binds 127.0.0.1 only and is ready when
``start`` returns, because it waits until moto answers HTTP.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import time
from types import TracebackType

from moto.server import ThreadedMotoServer

from shared.errors import RetryableDependencyError

HOST = "127.0.0.1"


class MotoServer:
    """Start and stop one moto server; usable as a context manager."""

    def __init__(self, *, port: int = 0) -> None:
        self._server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, *, timeout_s: float = 10.0) -> MotoServer:
        """Bind, serve, and return once moto answers a request."""
        # werkzeug logs every request at INFO; the gate logs the ones that matter.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        wait_until_answering(HOST, self.port, timeout_s=timeout_s)
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_until_answering(host: str, port: int, *, timeout_s: float = 10.0) -> None:
    """Poll until an HTTP server at host:port answers any status."""
    deadline = time.monotonic() + timeout_s
    while True:
        connection = http.client.HTTPConnection(host, port, timeout=1.0)
        try:
            connection.request("GET", "/moto-api/")
            connection.getresponse().read()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RetryableDependencyError(
                    f"moto on {host}:{port} did not answer within {timeout_s} s"
                    f" ({exc}); check that the port is free."
                ) from exc
            time.sleep(0.05)
        finally:
            connection.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m standins.moto_server --port N``: serve until interrupted."""
    parser = argparse.ArgumentParser(description="moto server mode on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    server = MotoServer(port=args.port).start()
    print(f"moto listening on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
