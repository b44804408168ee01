"""The V1_0 connection handshake: magic number, then SCRAM-SHA-256 (RFC 5802/7677) in JSON.

Sequence (every JSON message is NUL-terminated):

  client: <V1_0 magic, uint32 LE>
  server: {"success":true,"min_protocol_version":0,"max_protocol_version":0,"server_version":..}
  client: {"protocol_version":0,"authentication_method":"SCRAM-SHA-256",
           "authentication":"n,,n=<user>,r=<client nonce>"}
  server: {"success":true,"authentication":"r=<nonce>,s=<salt b64>,i=<iterations>"}
  client: {"authentication":"c=biws,r=<nonce>,p=<client proof b64>"}
  server: {"success":true,"authentication":"v=<server signature b64>"}

Failures answer {"success":false,"error":..,"error_code":N} and close; codes 10-20 make
the driver raise ReqlAuthError (12 = wrong password, 17 = unknown user, as RethinkDB).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import struct

from .protocol import V1_0

SERVER_VERSION = "2.4.4-rethinkdb_wire-test-double"
ITERATIONS = 4096


class HandshakeError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Credentials:
    """The single "admin" user; the salt is fixed per server process, like a stored user."""

    def __init__(self, password: str) -> None:
        self.salt = os.urandom(16)
        self.salted_password = hashlib.pbkdf2_hmac(
            "sha256", password.encode("utf-8"), self.salt, ITERATIONS
        )


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _attributes(message: str) -> dict[str, str]:
    pairs = (part.split("=", 1) for part in message.split(",") if "=" in part)
    return {key: value for key, value in pairs}


async def _read_json(reader: asyncio.StreamReader) -> dict:
    raw = await reader.readuntil(b"\0")
    try:
        message = json.loads(raw[:-1].decode("utf-8"))
    except ValueError:
        raise HandshakeError(8, "Invalid JSON object.") from None
    if not isinstance(message, dict):
        raise HandshakeError(8, "Invalid JSON object.")
    return message


def _write_json(writer: asyncio.StreamWriter, message: dict) -> None:
    writer.write(json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\0")


async def perform_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, credentials: Credentials
) -> bool:
    """Run the handshake; True when the client is authenticated and may send queries."""
    (magic,) = struct.unpack("<L", await reader.readexactly(4))
    if magic != V1_0:
        writer.write(
            b"ERROR: Received an unsupported protocol version. This port is for "
            b"RethinkDB queries. Does your client driver version not match the "
            b"server?\n\0"
        )
        return False
    _write_json(
        writer,
        {
            "success": True,
            "min_protocol_version": 0,
            "max_protocol_version": 0,
            "server_version": SERVER_VERSION,
        },
    )
    try:
        await _authenticate(reader, writer, credentials)
    except HandshakeError as error:
        _write_json(writer, {"success": False, "error": error.message, "error_code": error.code})
        return False
    return True


async def _authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, credentials: Credentials
) -> None:
    first = await _read_json(reader)
    if first.get("protocol_version") != 0:
        raise HandshakeError(2, "Unsupported `protocol_version`.")
    if first.get("authentication_method") != "SCRAM-SHA-256":
        raise HandshakeError(4, "Unsupported `authentication_method`.")
    client_first = first.get("authentication")
    if not isinstance(client_first, str) or client_first.count(",") < 2:
        raise HandshakeError(5, "Expected a string for `authentication`.")
    client_first_bare = client_first.split(",", 2)[2]  # drop the "n,," GS2 header
    attributes = _attributes(client_first_bare)
    user = attributes.get("n", "").replace("=2C", ",").replace("=3D", "=")
    if user != "admin":
        raise HandshakeError(17, "Unknown user")
    nonce = attributes.get("r", "") + base64.b64encode(os.urandom(18)).decode("ascii")
    server_first = (
        f"r={nonce},s={base64.b64encode(credentials.salt).decode('ascii')},i={ITERATIONS}"
    )
    _write_json(writer, {"success": True, "authentication": server_first})

    final = await _read_json(reader)
    client_final = final.get("authentication")
    if not isinstance(client_final, str) or ",p=" not in client_final:
        raise HandshakeError(5, "Expected a string for `authentication`.")
    without_proof, _, proof = client_final.rpartition(",p=")
    if _attributes(without_proof).get("r") != nonce:
        raise HandshakeError(20, "Invalid nonce")
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    client_key = _hmac(credentials.salted_password, b"Client Key")
    signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
    expected = bytes(k ^ s for k, s in zip(client_key, signature, strict=True))
    if not hmac.compare_digest(base64.b64encode(expected).decode("ascii"), proof):
        raise HandshakeError(12, "Wrong password")
    server_signature = _hmac(_hmac(credentials.salted_password, b"Server Key"), auth_message)
    _write_json(
        writer,
        {"success": True, "authentication": "v=" + base64.b64encode(server_signature).decode()},
    )
