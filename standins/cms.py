"""Build ``CiphertextForRecipient`` blobs the way KMS does, for the KMS stand-in.

KMS answers a ``Recipient`` call with a CMS ContentInfo / EnvelopedData (v2): one
KeyTransRecipientInfo (v2, rid subjectKeyIdentifier), RSAES-OAEP with explicit
SHA-256 and MGF1-SHA-256 parameters, AES-256-CBC under a random content key and
IV. KMS streams it as indefinite-length BER; asn1crypto writes only DER, so the
outer framing is written here and the inner pieces come from asn1crypto.
"""

from __future__ import annotations

import os

from asn1crypto import cms, core
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CBC

from shared.cms import RECIPIENT_KEY_BITS, subject_key_identifier
from shared.errors import CallerError

# Pieces of the constructed encrypted content; small so a data key spans several.
_BER_CHUNK_BYTES = 32
_END_OF_CONTENTS = b"\x00\x00"
_SEQUENCE = 0x30
_CONTEXT_0_CONSTRUCTED = 0xA0


def build_ciphertext_for_recipient(
    plaintext: bytes, recipient_public_key_der: bytes, *, ber: bool = True
) -> bytes:
    """Encrypt ``plaintext`` to the recipient key as KMS's CiphertextForRecipient."""
    public_key = _load_recipient_key(recipient_public_key_der)
    content_key = os.urandom(32)
    iv = os.urandom(16)
    oaep = OAEP(mgf=MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    recipient_infos = cms.RecipientInfos(
        [_key_trans_recipient(public_key, public_key.encrypt(content_key, oaep))]
    )
    algorithm = cms.EncryptionAlgorithm({"algorithm": "aes256_cbc", "parameters": iv})
    encrypted_content = _encrypt_cbc(plaintext, content_key, iv)
    if ber:
        return _ber_content_info(recipient_infos, algorithm, encrypted_content)
    return _der_content_info(recipient_infos, algorithm, encrypted_content)


def _load_recipient_key(der: bytes) -> rsa.RSAPublicKey:
    try:
        public_key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise CallerError(
            f"Recipient public key of {len(der)} bytes is not a DER "
            "SubjectPublicKeyInfo; send the key from the attestation document."
        ) from exc
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CallerError(
            f"Recipient public key is {type(public_key).__name__}, expected RSA; "
            "KMS supports only RSA recipients."
        )
    if public_key.key_size < RECIPIENT_KEY_BITS:
        raise CallerError(
            f"Recipient RSA key is {public_key.key_size} bits, expected at least "
            f"{RECIPIENT_KEY_BITS}; generate a larger enclave key."
        )
    return public_key


def _key_trans_recipient(
    public_key: rsa.RSAPublicKey, encrypted_key: bytes
) -> cms.RecipientInfo:
    sha256 = {"algorithm": "sha256"}
    oaep_params = {
        "hash_algorithm": sha256,
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": sha256},
    }
    ktri = cms.KeyTransRecipientInfo(
        {
            "version": "v2",
            "rid": cms.RecipientIdentifier(
                name="subject_key_identifier",
                value=subject_key_identifier(public_key),
            ),
            "key_encryption_algorithm": {
                "algorithm": "rsaes_oaep",
                "parameters": oaep_params,
            },
            "encrypted_key": encrypted_key,
        }
    )
    return cms.RecipientInfo(name="ktri", value=ktri)


def _encrypt_cbc(plaintext: bytes, content_key: bytes, iv: bytes) -> bytes:
    padder = padding.PKCS7(AES.block_size).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(AES(content_key), CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def _der_content_info(
    recipient_infos: cms.RecipientInfos,
    algorithm: cms.EncryptionAlgorithm,
    encrypted_content: bytes,
) -> bytes:
    enveloped = cms.EnvelopedData(
        {
            "version": "v2",
            "recipient_infos": recipient_infos,
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": algorithm,
                "encrypted_content": encrypted_content,
            },
        }
    )
    content_info = cms.ContentInfo(
        {"content_type": "enveloped_data", "content": enveloped}
    )
    der: bytes = content_info.dump()
    return der


def _ber_content_info(
    recipient_infos: cms.RecipientInfos,
    algorithm: cms.EncryptionAlgorithm,
    encrypted_content: bytes,
) -> bytes:
    """Indefinite-length framing, as ``openssl cms -stream`` and KMS emit it."""
    chunks = b"".join(
        core.OctetString(encrypted_content[i : i + _BER_CHUNK_BYTES]).dump()
        for i in range(0, len(encrypted_content), _BER_CHUNK_BYTES)
    )
    encrypted_content_info = _indefinite(
        _SEQUENCE,
        cms.ContentType("data").dump()
        + algorithm.dump()
        # [0] IMPLICIT OCTET STRING, constructed from definite-length pieces.
        + _indefinite(_CONTEXT_0_CONSTRUCTED, chunks),
    )
    enveloped = _indefinite(
        _SEQUENCE,
        cms.CMSVersion("v2").dump() + recipient_infos.dump() + encrypted_content_info,
    )
    # ContentInfo's content is [0] EXPLICIT, so it gets its own indefinite wrapper.
    return _indefinite(
        _SEQUENCE,
        cms.ContentType("enveloped_data").dump()
        + _indefinite(_CONTEXT_0_CONSTRUCTED, enveloped),
    )


def _indefinite(tag: int, contents: bytes) -> bytes:
    return bytes((tag, 0x80)) + contents + _END_OF_CONTENTS
