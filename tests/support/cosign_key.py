#!/usr/bin/python3
"""The cosign private key format, from another implementation than imgbuild's: the
go-securesystemslib `encrypted` envelope (scrypt + NaCl secretbox around a PKCS#8 key) read
and written with Python's hashlib, PyNaCl and pyca/cryptography. The signature tests use it
to check that imgbuild's keys open elsewhere and that keys made elsewhere open in imgbuild
(and the key skopeo signs the test's bases with).

  cosign_key.py make KEY PUB PASSWORD      write a key pair
  cosign_key.py sign KEY PASSWORD PAYLOAD  print the base64 DER ECDSA-SHA256 signature
"""
import base64
import hashlib
import json
import os
import sys

import nacl.secret
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

LABEL = "ENCRYPTED COSIGN PRIVATE KEY"


def make(key_path, pub_path, password):
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt = os.urandom(32)
    nonce = os.urandom(24)
    secret = hashlib.scrypt(password.encode(), salt=salt, n=32768, r=8, p=1, dklen=32, maxmem=64 << 20)
    box = nacl.secret.SecretBox(secret)
    ciphertext = box.encrypt(der, nonce).ciphertext  # tag || ciphertext, as NaCl
    envelope = {
        "kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": base64.b64encode(salt).decode()},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    body = base64.encodebytes(json.dumps(envelope).encode()).decode()
    with open(key_path, "w") as f:
        f.write(f"-----BEGIN {LABEL}-----\n{body}-----END {LABEL}-----\n")
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with open(pub_path, "wb") as f:
        f.write(pub)


def open_key(key_path, password):
    text = open(key_path).read()
    begin, end = f"-----BEGIN {LABEL}-----", f"-----END {LABEL}-----"
    body = text[text.index(begin) + len(begin) : text.index(end)]
    envelope = json.loads(base64.b64decode("".join(body.split())))
    kdf, cipher = envelope["kdf"], envelope["cipher"]
    assert kdf["name"] == "scrypt" and cipher["name"] == "nacl/secretbox", envelope
    params = kdf["params"]
    secret = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(kdf["salt"]),
        n=params["N"],
        r=params["r"],
        p=params["p"],
        dklen=32,
        maxmem=256 << 20,
    )
    der = nacl.secret.SecretBox(secret).decrypt(
        base64.b64decode(envelope["ciphertext"]), base64.b64decode(cipher["nonce"])
    )
    return serialization.load_der_private_key(der, password=None)


def sign(key_path, password, payload_path):
    key = open_key(key_path, password)
    sig = key.sign(open(payload_path, "rb").read(), ec.ECDSA(hashes.SHA256()))
    print(base64.b64encode(sig).decode())


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"make": make, "sign": sign}[cmd](*args)
