"""The attested KMS stand-in: an ASGI server in front of moto's KMS.

It speaks KMS's JSON protocol, authenticates callers by SigV4 against the
principals of its config, and for cryptographic operations evaluates the key
policy (``standins.policy``) with the request's encryption context and, when a
``Recipient`` carries an attestation document that verifies against the dev root,
the ``kms:RecipientAttestation:*`` keys. Allowed ``Recipient`` calls are answered
as KMS does: no ``Plaintext``, a ``CiphertextForRecipient`` instead. Every other
operation passes through to moto unchanged, so administrators use the same client.

Run it with ``python -m standins.kms_gate --config FILE --port N``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import logging
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.attestation import (
    load_root,
    parse_attestation,
    recipient_public_key,
    verify_attestation,
)
from shared.errors import AttestationError, CallerError, Reason
from shared.logging import configure_logging, get_logger
from standins.cms import build_ciphertext_for_recipient
from standins.policy import (
    Decision,
    PolicyError,
    RequestContext,
    evaluate,
    parse_policy,
)
from standins.sigv4 import (
    HttpRequest,
    SignatureError,
    parse_authorization,
    sign,
    verify,
)

JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "TrentService."
KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
# Headers that describe one hop, or that only the gate may set towards moto.
_HOP_HEADERS = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "x-moto-account-id"}
)
_KEYED_ACTIONS = {
    "Encrypt": "kms:Encrypt",
    "GenerateDataKey": "kms:GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext": "kms:GenerateDataKeyWithoutPlaintext",
}
_UNSUPPORTED = frozenset({"DeriveSharedSecret"})

log = get_logger(__name__)


class KmsError(CallerError):
    """An answer in KMS's error format: ``__type`` code, message, HTTP status."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message, reason=Reason.ACCESS_DENIED)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Principal:
    arn: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class GateConfig:
    """Where moto listens, whose account it plays, the dev root, the callers."""

    upstream: str
    account_id: str
    attestation_root_pem: Path
    principals: Mapping[str, Principal] = field(repr=False)
    upstream_timeout_s: float = 10.0

    @classmethod
    def load(cls, path: Path | str) -> GateConfig:
        """Read the JSON config; a relative root path is taken from its folder."""
        source = Path(path)
        try:
            data = json.loads(source.read_text())
            root = Path(data["attestation_root_pem"])
            return cls(
                upstream=str(data["upstream"]).rstrip("/"),
                account_id=str(data["account_id"]),
                attestation_root_pem=root
                if root.is_absolute()
                else source.parent / root,
                principals={
                    akid: Principal(
                        arn=entry["arn"],
                        secret_access_key=entry["secret_access_key"],
                        session_token=entry.get("session_token"),
                    )
                    for akid, entry in data["principals"].items()
                },
                upstream_timeout_s=float(data.get("upstream_timeout_s", 10.0)),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CallerError(
                f"Cannot read the KMS gate config {source}: {exc!r}; write JSON with"
                " upstream, account_id, attestation_root_pem and principals."
            ) from exc


@dataclass(frozen=True)
class Caller:
    """An authenticated request: who sent it, for which region, and what."""

    principal: Principal
    access_key_id: str
    region: str
    operation: str
    request: HttpRequest


@dataclass(frozen=True)
class Attested:
    """A verified recipient: its PCRs (lowercase hex) and its public key (DER)."""

    pcrs: Mapping[int, str]
    public_key_der: bytes = field(repr=False)


class Gate:
    """Request handling; one instance per server, sharing one upstream client."""

    def __init__(self, config: GateConfig, *, root: x509.Certificate | None = None):
        self._config = config
        self._root = root or load_root(config.attestation_root_pem)
        self._http = httpx.AsyncClient(timeout=config.upstream_timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def handle(self, request: Request) -> Response:
        """One KMS call: authenticate, then check or pass through."""
        caller: Caller | None = None
        error: str | None = None
        try:
            caller = self._authenticate(await self._http_request(request))
            response = await self._dispatch(caller)
        except KmsError as exc:
            error = exc.code
            response = _error(exc)
        except Exception as exc:
            # A bug or an answer moto never gave before; say so without the payload.
            log.exception("kms_gate_bug", error=type(exc).__name__)
            error = "KMSInternalException"
            response = _error(
                KmsError(error, "The KMS stand-in failed internally.", status=500)
            )
        log.info(
            "kms_request",
            operation=caller.operation if caller else None,
            principal=caller.principal.arn if caller else None,
            status=response.status_code,
            error=error,
        )
        return response

    async def _http_request(self, request: Request) -> HttpRequest:
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        return HttpRequest(
            method=request.method,
            raw_path=request.scope.get("raw_path", b"/").decode("latin-1"),
            query=request.scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=await request.body(),
        )

    def _authenticate(self, http: HttpRequest) -> Caller:
        try:
            auth = parse_authorization(http.headers.get("authorization"))
            principal = self._config.principals.get(auth.access_key_id)
            if principal is None:
                raise KmsError(
                    "UnrecognizedClientException",
                    f"The access key id {auth.access_key_id} is not in the gate's"
                    " principals; use one the config lists.",
                )
            verify(http, auth, principal.secret_access_key)
        except SignatureError as exc:
            raise KmsError(exc.code, str(exc)) from exc
        token = http.headers.get("x-amz-security-token")
        if principal.session_token is not None and token != principal.session_token:
            raise KmsError(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        target = http.headers.get("x-amz-target", "")
        if not target.startswith(TARGET_PREFIX):
            raise KmsError(
                "UnknownOperationException",
                f"X-Amz-Target {target!r} is not a TrentService operation.",
            )
        operation = target.removeprefix(TARGET_PREFIX)
        return Caller(principal, auth.access_key_id, auth.region, operation, http)

    async def _dispatch(self, caller: Caller) -> Response:
        operation = caller.operation
        if operation in _UNSUPPORTED:
            raise KmsError(
                "UnsupportedOperationException",
                f"{operation} is not supported by the KMS stand-in.",
            )
        if operation in _KEYED_ACTIONS:
            return await self._keyed(caller, _KEYED_ACTIONS[operation])
        if operation == "Decrypt":
            return await self._decrypt(caller)
        if operation == "ReEncrypt":
            return await self._re_encrypt(caller)
        if operation == "GenerateRandom" and "Recipient" in _payload(caller):
            return await self._random_for_recipient(caller)
        return await self._pass_through(caller)

    async def _keyed(self, caller: Caller, action: str) -> Response:
        """Operations naming their key: resolve it, check, then forward."""
        payload = _payload(caller)
        # Of these three, only GenerateDataKey takes a Recipient.
        wants_recipient = caller.operation == "GenerateDataKey"
        attested = self._recipient(payload) if wants_recipient else None
        described = await self._call(caller, "DescribeKey", {"KeyId": _key_id(payload)})
        key_arn = str(described["KeyMetadata"]["Arn"])
        context = payload.get("EncryptionContext")
        await self._authorize(caller, action, key_arn, context, attested)
        answer = await self._call(caller, caller.operation, _without_recipient(payload))
        return _json(_for_recipient(answer, attested))

    async def _decrypt(self, caller: Caller) -> Response:
        """Decrypt names its key only in the blob, so moto answers first."""
        payload = _payload(caller)
        attested = self._recipient(payload)
        answer = await self._call(caller, "Decrypt", _without_recipient(payload))
        # On denial the plaintext moto returned is dropped with this frame.
        context = payload.get("EncryptionContext")
        await self._authorize(
            caller, "kms:Decrypt", str(answer["KeyId"]), context, attested
        )
        return _json(_for_recipient(answer, attested))

    async def _re_encrypt(self, caller: Caller) -> Response:
        payload = _payload(caller)
        answer = await self._call(caller, "ReEncrypt", payload)
        source, destination = str(answer["SourceKeyId"]), str(answer["KeyId"])
        source_context = payload.get("SourceEncryptionContext")
        destination_context = payload.get("DestinationEncryptionContext")
        await self._authorize(caller, "kms:ReEncryptFrom", source, source_context, None)
        await self._authorize(
            caller, "kms:ReEncryptTo", destination, destination_context, None
        )
        return _json(answer)

    async def _random_for_recipient(self, caller: Caller) -> Response:
        # GenerateRandom names no key, so no key policy applies; IAM would decide.
        payload = _payload(caller)
        attested = self._recipient(payload)
        answer = await self._call(caller, "GenerateRandom", _without_recipient(payload))
        return _json(_for_recipient(answer, attested))

    def _recipient(self, payload: Mapping[str, Any]) -> Attested | None:
        """Verify the Recipient's document, or None when the call carries none."""
        recipient = payload.get("Recipient")
        if recipient is None:
            return None
        if not isinstance(recipient, dict):
            raise KmsError("ValidationException", "Recipient must be an object.")
        algorithm = recipient.get("KeyEncryptionAlgorithm")
        if algorithm != KEY_ENCRYPTION_ALGORITHM:
            raise KmsError(
                "ValidationException",
                f"Recipient KeyEncryptionAlgorithm {algorithm!r} is not supported;"
                f" use {KEY_ENCRYPTION_ALGORITHM}.",
            )
        document = _blob(recipient.get("AttestationDocument"), "AttestationDocument")
        return self._attest(document)

    def _attest(self, document: bytes) -> Attested:
        try:
            parse_attestation(document)
        except AttestationError as exc:
            raise KmsError(
                "ValidationException",
                f"The Recipient attestation document cannot be parsed: {exc}",
            ) from exc
        try:
            doc = verify_attestation(document, root=self._root)
        except AttestationError as exc:
            raise KmsError(
                "AccessDeniedException",
                f"The Recipient attestation document is not trusted: {exc}",
            ) from exc
        try:
            recipient_public_key(doc)  # an RSA SubjectPublicKeyInfo, or it raises
        except AttestationError as exc:
            raise KmsError("ValidationException", str(exc)) from exc
        assert doc.public_key is not None
        pcrs = {index: value.hex() for index, value in doc.pcrs.items()}
        return Attested(pcrs=pcrs, public_key_der=doc.public_key)

    async def _authorize(
        self,
        caller: Caller,
        action: str,
        key_arn: str,
        encryption_context: Any,
        attested: Attested | None,
    ) -> None:
        raw = await self._call(
            caller, "GetKeyPolicy", {"KeyId": key_arn, "PolicyName": "default"}
        )
        context = RequestContext.build(
            caller.principal.arn,
            action,
            key_arn,
            encryption_context=_string_map(encryption_context),
            attestation_pcrs=attested.pcrs if attested else None,
        )
        try:
            decision = evaluate(parse_policy(str(raw.get("Policy", "{}"))), context)
        except PolicyError as exc:
            reason = f"the key policy cannot be read: {str(exc).rstrip('.')}"
            decision = Decision(False, None, reason)
        if not decision.allowed:
            message = decision.denial_message(context)
            if attested and all(set(v) == {"0"} for v in attested.pcrs.values()):
                message += " The attestation document comes from a debug-mode enclave."
            raise KmsError("AccessDeniedException", message)

    async def _pass_through(self, caller: Caller) -> Response:
        http = caller.request
        headers = {
            name: value
            for name, value in http.headers.items()
            if name not in _HOP_HEADERS
        }
        upstream = await self._send(http.body, headers)
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", JSON_CONTENT_TYPE),
        )

    async def _call(
        self, caller: Caller, operation: str, payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A KMS call of the gate's own, signed with the caller's credentials."""
        body = json.dumps(payload).encode()
        headers = {
            "host": httpx.URL(self._config.upstream).netloc.decode(),
            "content-type": JSON_CONTENT_TYPE,
            "x-amz-target": TARGET_PREFIX + operation,
        }
        signed = sign(
            HttpRequest("POST", "/", "", headers, body),
            access_key_id=caller.access_key_id,
            secret_access_key=caller.principal.secret_access_key,
            region=caller.region,
        )
        upstream = await self._send(body, {**headers, **signed})
        answer = _decode(upstream)
        if upstream.status_code != 200:
            code = str(answer.get("__type", "KMSInternalException")).split("#")[-1]
            message = str(answer.get("message") or answer.get("Message") or "")
            raise KmsError(code, message, status=upstream.status_code)
        return answer

    async def _send(self, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        headers = {**headers, "x-moto-account-id": self._config.account_id}
        headers.pop("host", None)
        try:
            return await self._http.post(
                self._config.upstream + "/", content=body, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise KmsError(
                "DependencyTimeoutException",
                f"The upstream KMS at {self._config.upstream} did not answer in"
                f" {self._config.upstream_timeout_s} s; retry later.",
                status=500,
            ) from exc
        except httpx.TransportError as exc:
            raise KmsError(
                "KMSInternalException",
                f"The upstream KMS at {self._config.upstream} is unreachable"
                f" ({type(exc).__name__}); start it or fix the gate's upstream.",
                status=500,
            ) from exc


def _payload(caller: Caller) -> dict[str, Any]:
    try:
        payload = json.loads(caller.request.body or b"{}")
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise KmsError(
            "SerializationException",
            f"The {caller.operation} request body is not a JSON object.",
        )
    return payload


def _key_id(payload: Mapping[str, Any]) -> str:
    key_id = payload.get("KeyId")
    if not isinstance(key_id, str) or not key_id:
        raise KmsError(
            "ValidationException",
            "KeyId is required; pass a key id, key ARN, alias name or alias ARN.",
        )
    return key_id


def _blob(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise KmsError("ValidationException", f"{name} is required as base64 text.")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise KmsError("ValidationException", f"{name} is not valid base64.") from exc


def _string_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise KmsError(
            "ValidationException", "EncryptionContext must map strings to strings."
        )
    return value


def _without_recipient(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in payload.items() if name != "Recipient"}


def _for_recipient(answer: dict[str, Any], attested: Attested | None) -> dict[str, Any]:
    """Swap ``Plaintext`` for ``CiphertextForRecipient`` when a recipient asked."""
    if attested is None:
        return answer
    plaintext = base64.b64decode(answer.pop("Plaintext"))
    wrapped = build_ciphertext_for_recipient(plaintext, attested.public_key_der)
    answer["CiphertextForRecipient"] = base64.b64encode(wrapped).decode()
    return answer


def _decode(upstream: httpx.Response) -> dict[str, Any]:
    try:
        answer = upstream.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise KmsError(
            "KMSInternalException",
            f"The upstream KMS answered HTTP {upstream.status_code} without a JSON"
            " object; check that the gate's upstream is moto.",
            status=500,
        )
    return answer


def _json(answer: Mapping[str, Any], status: int = 200) -> Response:
    return Response(
        json.dumps(answer),
        status_code=status,
        media_type=JSON_CONTENT_TYPE,
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def _error(exc: KmsError) -> Response:
    return _json({"__type": exc.code, "message": str(exc)}, status=exc.status)


def create_app(
    config: GateConfig, *, root: x509.Certificate | None = None
) -> Starlette:
    """The ASGI app; it closes its upstream client on shutdown."""
    gate = Gate(config, root=root)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gate.aclose()

    async def healthz(_: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    return Starlette(
        routes=[
            Route("/", gate.handle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


class GateServer:
    """The gate under uvicorn in a background thread, for tests and ``dev up``."""

    def __init__(self, config: GateConfig, *, port: int = 0) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this; without it uvicorn's separate header and
        # body writes meet delayed ACKs and every answer takes some 40 ms more.
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        uv_config = uvicorn.Config(
            create_app(config), log_level="warning", lifespan="on", access_log=False
        )
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self, *, timeout_s: float = 10.0) -> GateServer:
        self._thread.start()
        ready = threading.Event()
        for _ in range(int(timeout_s / 0.02)):
            if self._server.started or not self._thread.is_alive():
                break
            ready.wait(0.02)
        if not self._server.started:
            raise CallerError(f"The KMS gate did not start on {self.url}.")
        return self

    def stop(self, *, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
        self._socket.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m standins.kms_gate --config FILE --port N``."""
    parser = argparse.ArgumentParser(description="Attested KMS stand-in for moto.")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    configure_logging("kms-gate")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = GateConfig.load(args.config)
    uvicorn.run(
        create_app(config),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
