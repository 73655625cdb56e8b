"""ECDSA P-256 key pairs in cosign's formats.

Private keys are stored encrypted exactly as cosign stores them (its
`ENCRYPTED SIGSTORE PRIVATE KEY` PEM: JSON with scrypt N=65536 r=8 p=1 and a
NaCl secretbox over the PKCS#8 DER), so `cosign sign --key` takes Berth's
keys and Berth takes cosign's. Public keys are PEM SubjectPublicKeyInfo.
The password comes from the caller (the CLI: $COSIGN_PASSWORD, as cosign, or a prompt).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.secret
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

PEM_TYPES = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 65536, 8, 1


class KeyFileError(ValueError):
    """A key that cannot be read (wrong password, wrong format)."""


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes  # encrypted, cosign format
    public_pem: bytes


def _pem_body(pem: bytes, types: tuple[str, ...]) -> bytes:
    text = pem.decode("ascii", "replace").strip()
    for t in types:
        head, tail = f"-----BEGIN {t}-----", f"-----END {t}-----"
        if text.startswith(head) and tail in text:
            return base64.b64decode("".join(text[len(head):text.index(tail)].split()))
    raise KeyFileError(f"not a cosign private key (want a PEM of type {types[0]})")


def encrypt_private_key(key: ec.EllipticCurvePrivateKey, password: bytes) -> bytes:
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    salt = os.urandom(32)
    secret = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(password)
    nonce = os.urandom(nacl.secret.SecretBox.NONCE_SIZE)
    box = nacl.secret.SecretBox(secret)
    ciphertext = box.encrypt(der, nonce).ciphertext
    doc = {"kdf": {"name": "scrypt", "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
                   "salt": base64.b64encode(salt).decode()},
           "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
           "ciphertext": base64.b64encode(ciphertext).decode()}
    body = base64.encodebytes(json.dumps(doc, separators=(",", ":")).encode()).decode()
    body = "".join(body.split())
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return (f"-----BEGIN {PEM_TYPES[0]}-----\n" + "\n".join(lines) +
            f"\n-----END {PEM_TYPES[0]}-----\n").encode()


def decrypt_private_key(pem: bytes, password: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        doc = json.loads(_pem_body(pem, PEM_TYPES))
        kdf, cipher = doc["kdf"], doc["cipher"]
        if kdf["name"] != "scrypt" or cipher["name"] != "nacl/secretbox":
            raise KeyFileError(f"unsupported key encryption {kdf['name']}/{cipher['name']}")
        p = kdf["params"]
        secret = Scrypt(salt=base64.b64decode(kdf["salt"]), length=32, n=int(p["N"]),
                        r=int(p["r"]), p=int(p["p"])).derive(password)
        der = nacl.secret.SecretBox(secret).decrypt(base64.b64decode(doc["ciphertext"]),
                                                    base64.b64decode(cipher["nonce"]))
    except nacl.exceptions.CryptoError:
        raise KeyFileError("wrong password for the private key") from None
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, KeyFileError):
            raise
        raise KeyFileError(f"malformed cosign private key: {e}") from None
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError("the private key is not ECDSA P-256")
    return key


def generate_key_pair(password: bytes) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    return KeyPair(encrypt_private_key(key, password), public_pem(key.public_key()))


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise KeyFileError(f"not a PEM public key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyFileError("the public key is not ECDSA")
    return key


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """A short stable name for a key (sha256 of its DER), for messages and records."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> str:
    """base64 of the ASN.1 DER ECDSA-SHA256 signature (cosign's annotation value)."""
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def verify(key: ec.EllipticCurvePublicKey, data: bytes, signature_b64: str) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), data,
                   ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


def write_key_pair(pair: KeyPair, prefix: Path) -> tuple[Path, Path]:
    """<prefix>.key (0600) and <prefix>.pub, as `cosign generate-key-pair` writes them."""
    priv, pub = prefix.with_suffix(".key"), prefix.with_suffix(".pub")
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.private_pem)
    pub.write_bytes(pair.public_pem)
    return priv, pub
