"""A simulated Nitro Secure Module for development and CI machines.

``DevPki`` is a local root and intermediate CA kept in the dev state folder; the
verifiers of a dev mesh pin its root instead of the AWS one. ``SimulatedNsm`` signs
documents in the real format (COSE_Sign1, ES384, the NSM payload map) with a
short-lived leaf certificate of its own, over the PCRs measured from the worker
tree. ``build_attestation_document`` is the lower-level builder tests use to make
documents with chosen, even invalid, fields.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from shared.attestation import (
    COSE_ALG_ES384,
    COSE_HEADER_ALG,
    COSE_SIGN1_TAG,
    ES384_SIGNATURE_SIZE,
)
from shared.errors import CallerError, InternalError

PCR_SIZE = 48
SIMULATED_PCR_COUNT = 16
LEAF_LIFETIME = timedelta(hours=3)
LEAF_RENEW_BEFORE = timedelta(minutes=15)
DEFAULT_MODULE_ID = "i-0000000000000000-enc0000000000000000"

_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)

_PKI_DIR = "nsm-pki"
_FILES = (
    "root.key.pem",
    "root.cert.pem",
    "intermediate.key.pem",
    "intermediate.cert.pem",
)


@dataclass(frozen=True)
class DevPki:
    """The dev root and intermediate CA that stand in for the AWS Nitro PKI."""

    root_certificate: x509.Certificate
    intermediate_certificate: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey = field(repr=False)
    intermediate_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Self:
        """Load the PKI from ``state_dir``, creating it once on first use.

        A file lock makes concurrent first starts agree on a single PKI.
        """
        folder = state_dir / _PKI_DIR
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not all((folder / name).exists() for name in _FILES):
                _write_pki(folder, cls.create())
            return cls._load(folder)

    @staticmethod
    def root_certificate_path(state_dir: Path) -> Path:
        """Where ``load_or_create`` keeps the root PEM that dev verifiers pin."""
        return state_dir / _PKI_DIR / _FILES[1]

    @classmethod
    def create(cls) -> Self:
        """A fresh PKI in memory; ``load_or_create`` is what services use."""
        now = datetime.now(UTC)
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = _name("Obscura dev NSM root", "obscura-dev.nitro-enclaves")
        root = _issue(
            subject=root_name,
            key=root_key.public_key(),
            issuer=root_name,
            signer=root_key,
            valid=(now - timedelta(minutes=5), now + timedelta(days=3650)),
            path_length=None,
        )
        mid_key = ec.generate_private_key(ec.SECP384R1())
        mid = _issue(
            subject=_name("Obscura dev NSM intermediate", "zonal.obscura-dev"),
            key=mid_key.public_key(),
            issuer=root_name,
            signer=root_key,
            valid=(now - timedelta(minutes=5), now + timedelta(days=1825)),
            path_length=0,
        )
        return cls(root, mid, root_key, mid_key)

    @classmethod
    def _load(cls, folder: Path) -> Self:
        root_key, root, mid_key, mid = ((folder / name).read_bytes() for name in _FILES)
        return cls(
            root_certificate=x509.load_pem_x509_certificate(root),
            intermediate_certificate=x509.load_pem_x509_certificate(mid),
            root_key=_load_key(root_key),
            intermediate_key=_load_key(mid_key),
        )

    def issue_leaf(
        self,
        *,
        not_before: datetime,
        not_after: datetime,
        module_id: str = DEFAULT_MODULE_ID,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A signing key and its end-entity certificate, as the NSM holds one."""
        key = ec.generate_private_key(ec.SECP384R1())
        cert = _issue(
            subject=_name("Obscura dev NSM", module_id),
            key=key.public_key(),
            issuer=self.intermediate_certificate.subject,
            signer=self.intermediate_key,
            valid=(not_before, not_after),
            path_length=None,
            ca=False,
        )
        return key, cert


class SimulatedNsm:
    """``Nsm`` that signs real-format documents with the dev PKI.

    PCRs 0..15 are reported as a real enclave does: the given measured values,
    the rest zero. ``debug=True`` reports all zeros, like ``--debug-mode``.
    """

    def __init__(
        self,
        pki: DevPki,
        pcrs: Mapping[int, bytes],
        *,
        debug: bool = False,
        module_id: str = DEFAULT_MODULE_ID,
        tagged: bool = True,
    ) -> None:
        self._pki = pki
        self._pcrs = _report_pcrs(pcrs, debug=debug)
        self._module_id = module_id
        self._tagged = tagged
        self._lock = threading.Lock()
        self._leaf = self._new_leaf()

    @property
    def pcrs(self) -> Mapping[int, bytes]:
        return dict(self._pcrs)

    def attest(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        key, cert = self._current_leaf()
        return build_attestation_document(
            signing_key=key,
            certificate=cert,
            cabundle=[self._pki.root_certificate, self._pki.intermediate_certificate],
            pcrs=self._pcrs,
            module_id=self._module_id,
            user_data=user_data,
            nonce=nonce,
            public_key=public_key,
            tagged=self._tagged,
        )

    def _current_leaf(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        # Like the real module, rotate the short-lived leaf before it expires so a
        # long-running worker never hands out a document that fails validity.
        with self._lock:
            expires = self._leaf[1].not_valid_after_utc
            if datetime.now(UTC) >= expires - LEAF_RENEW_BEFORE:
                self._leaf = self._new_leaf()
            return self._leaf

    def _new_leaf(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        now = datetime.now(UTC)
        return self._pki.issue_leaf(
            not_before=now - timedelta(seconds=5),
            not_after=now + LEAF_LIFETIME,
            module_id=self._module_id,
        )


def build_attestation_document(
    *,
    signing_key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
    cabundle: Sequence[x509.Certificate],
    pcrs: Mapping[int, bytes],
    module_id: str = DEFAULT_MODULE_ID,
    timestamp: datetime | None = None,
    digest: str = "SHA384",
    user_data: bytes | None = None,
    nonce: bytes | None = None,
    public_key: bytes | None = None,
    alg: int = COSE_ALG_ES384,
    tagged: bool = True,
) -> bytes:
    """Sign a COSE_Sign1 attestation document over exactly the fields given.

    Nothing is validated, so tests can build documents a verifier must refuse.
    """
    when = timestamp or datetime.now(UTC)
    der = serialization.Encoding.DER
    payload = cbor2.dumps(
        {
            "module_id": module_id,
            "digest": digest,
            "timestamp": int(when.timestamp() * 1000),
            "pcrs": dict(pcrs),
            "certificate": certificate.public_bytes(der),
            "cabundle": [cert.public_bytes(der) for cert in cabundle],
            "public_key": public_key,
            "user_data": user_data,
            "nonce": nonce,
        }
    )
    protected = cbor2.dumps({COSE_HEADER_ALG: alg})
    signature = sign_es384(signing_key, protected, payload)
    sign1 = [protected, {}, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, sign1) if tagged else sign1)


def sign_es384(
    key: ec.EllipticCurvePrivateKey, protected: bytes, payload: bytes
) -> bytes:
    """The COSE ES384 signature: raw r||s over the Signature1 structure."""
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(to_be_signed, ec.ECDSA(hashes.SHA384())))
    half = ES384_SIGNATURE_SIZE // 2
    return r.to_bytes(half, "big") + s.to_bytes(half, "big")


def _report_pcrs(pcrs: Mapping[int, bytes], *, debug: bool) -> dict[int, bytes]:
    reported = {index: bytes(PCR_SIZE) for index in range(SIMULATED_PCR_COUNT)}
    if debug:
        return reported
    for index, value in pcrs.items():
        if not 0 <= index < 32 or len(value) != PCR_SIZE:
            raise CallerError(
                f"PCR{index} of {len(value)} bytes cannot be simulated; give PCRs "
                f"0..31 of {PCR_SIZE} bytes (SHA-384)."
            )
        reported[index] = bytes(value)
    return dict(sorted(reported.items()))


def _name(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    valid: tuple[datetime, datetime],
    path_length: int | None,
    ca: bool = True,
) -> x509.Certificate:
    usage = {name: False for name in _KEY_USAGES}
    usage.update(key_cert_sign=ca, crl_sign=ca, digital_signature=not ca)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
            critical=True,
        )
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    )
    return builder.sign(signer, hashes.SHA384())


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InternalError(
            f"The dev NSM PKI holds a {type(key).__name__}, not EC; delete it."
        )
    return key


def _write_pki(folder: Path, pki: DevPki) -> None:
    pem = serialization.Encoding.PEM
    blobs = (
        _key_pem(pki.root_key),
        pki.root_certificate.public_bytes(pem),
        _key_pem(pki.intermediate_key),
        pki.intermediate_certificate.public_bytes(pem),
    )
    for name, blob in zip(_FILES, blobs, strict=True):
        _write_private(folder / name, blob)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, blob: bytes) -> None:
    """Write via a 0600 temporary file renamed into place, so no reader sees half."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(blob)
    os.replace(temporary, path)
