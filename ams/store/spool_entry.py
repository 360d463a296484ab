"""Spool entries: the file format of one queued message, and entry ids.

All integers little-endian, CRC is CRC-32 (zlib.crc32)::

    off size field
      0   8  magic          b"\\x89AMSQUE\\n"
      8   2  version        1 (this code refuses anything greater)
     10   2  header_size    32
     12   4  envelope_len   E, at most 16 MiB
     16   8  message_len    M
     24   4  message_crc    CRC-32 of the message
     28   4  header_crc     CRC-32 of bytes 0..27 followed by the envelope
     32   E  envelope       UTF-8 JSON object (below)
   32+E   M  message        the RFC 5322 message exactly as received

The file is exactly 32 + E + M bytes.  A wrong magic, size or CRC is
:class:`~ams.errors.CorruptionError`; a version above 1 is
:class:`~ams.errors.FormatVersionError`.  Envelope keys (all since version
1; readers ignore keys they do not know): ``id`` (str), ``from`` (str, ""
for the null sender), ``to`` (list of str), ``received_us`` (int, µs since
the epoch), ``host`` (str, the enqueuing host), ``client`` (object of str:
helo, addr, auth ...), ``extra`` (object: DSN parameters and the like).

Entry id: ``TTTTTTTTTTTTTTTT-RRRRRRRRRRRRRRRR-HOST``: the enqueue time in µs
and 64 random bits, 16 hex digits each, then the host name with anything
outside ``[A-Za-z0-9._-]`` replaced by ``_``.  Ids sort by time.

Heartbeat ``workers/WORKER`` (JSON): ``format`` (1), ``id``, ``host``,
``pid``, ``started`` and ``expires`` (Unix seconds), ``queues`` (list).
Reason sidecar (JSON): ``format`` (1), ``reason``, ``failed_us``,
``attempts``, ``worker``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ams.errors import CorruptionError, FormatVersionError
from ams.store import _fs

ENTRY_MAGIC = b"\x89AMSQUE\n"
ENTRY_VERSION = 1
ENTRY_HEADER_SIZE = 32
MAX_ENVELOPE = 16 * 1024 * 1024
_HEADER = struct.Struct("<8sHHIQII")
_CRC = struct.Struct("<I")

_ID = r"[0-9a-f]{16}-[0-9a-f]{16}-[A-Za-z0-9._-]{1,64}"
_ID_RE = re.compile(_ID)


# -- entry format ------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    received_us: int
    host: str
    client: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({
            "id": self.id, "from": self.mail_from, "to": list(self.rcpt_to),
            "received_us": self.received_us, "host": self.host, "client": dict(self.client),
            "extra": dict(self.extra)}, sort_keys=True, ensure_ascii=False,
            separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, path: object = None) -> Envelope:
        try:
            d = json.loads(raw.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError is a ValueError
            raise CorruptionError("spool envelope is not UTF-8 JSON", path=path,
                                  offset=ENTRY_HEADER_SIZE) from None
        if not isinstance(d, dict):
            raise CorruptionError("spool envelope is not a JSON object", path=path)
        try:
            client, extra = _typed(d, "client", dict), _typed(d, "extra", dict)
            rcpts = _typed(d, "to", list)
            return cls(id=_typed(d, "id", str), mail_from=_typed(d, "from", str),
                       rcpt_to=tuple(_typed(rcpts, i, str) for i in range(len(rcpts))),
                       received_us=_typed(d, "received_us", int), host=_typed(d, "host", str),
                       client={k: _typed(client, k, str) for k in client}, extra=extra)
        except (KeyError, TypeError) as e:
            raise CorruptionError(f"spool envelope field {e}", path=path) from None


def _typed(d: Any, key: str | int, tp: type[Any]) -> Any:
    v = d[key]
    if not isinstance(v, tp) or isinstance(v, bool):
        raise TypeError(f"{key!r} is not {tp.__name__}")
    return v


@dataclass(frozen=True)
class Entry:
    envelope: Envelope
    message: bytes


def entry_head(envelope: Envelope, message: bytes) -> bytes:
    """Header and envelope of an entry; the message follows them on disk."""
    env = envelope.to_json()
    if len(env) > MAX_ENVELOPE:
        raise ValueError("spool envelope too large")
    fixed = _HEADER.pack(ENTRY_MAGIC, ENTRY_VERSION, ENTRY_HEADER_SIZE, len(env), len(message),
                         zlib.crc32(message), 0)[:28]
    return fixed + _CRC.pack(zlib.crc32(env, zlib.crc32(fixed))) + env


def encode_entry(envelope: Envelope, message: bytes) -> bytes:
    return entry_head(envelope, message) + message


def _parse_header(buf: bytes, path: object) -> tuple[int, int, int]:
    """(envelope_len, message_len, message_crc) from the fixed header."""
    if buf[:8] != ENTRY_MAGIC or len(buf) < 10:
        raise CorruptionError("not a spool entry (bad magic)", path=path, offset=0)
    version = int.from_bytes(buf[8:10], "little")
    if version > ENTRY_VERSION:
        raise FormatVersionError(f"{path}: spool entry version {version} is newer than this "
                                 f"AMS ({ENTRY_VERSION})")
    if version < 1 or len(buf) < ENTRY_HEADER_SIZE:
        raise CorruptionError("bad or truncated spool entry header", path=path, offset=8)
    _magic, _v, hsize, elen, mlen, mcrc, _crc = _HEADER.unpack_from(buf)
    if hsize != ENTRY_HEADER_SIZE or elen > MAX_ENVELOPE:
        raise CorruptionError("bad spool entry header", path=path, offset=10)
    return elen, mlen, mcrc


def _check_head(buf: bytes, elen: int, path: object) -> Envelope:
    env = buf[ENTRY_HEADER_SIZE:ENTRY_HEADER_SIZE + elen]
    if len(env) != elen:
        raise CorruptionError("spool entry truncated in its envelope", path=path,
                              offset=ENTRY_HEADER_SIZE)
    (crc,) = _CRC.unpack_from(buf, 28)
    if zlib.crc32(env, zlib.crc32(buf[:28])) != crc:
        raise CorruptionError("spool entry header checksum mismatch", path=path, offset=28)
    return Envelope.from_json(env, path)


def decode_entry(data: bytes, path: object = None) -> Entry:
    """Parse and verify a whole entry file."""
    elen, mlen, mcrc = _parse_header(data, path)
    envelope = _check_head(data, elen, path)
    start = ENTRY_HEADER_SIZE + elen
    if len(data) != start + mlen:
        raise CorruptionError(f"spool entry is {len(data)} bytes, header says {start + mlen}",
                              path=path)
    message = data[start:]
    if zlib.crc32(message) != mcrc:
        raise CorruptionError("spool message checksum mismatch", path=path, offset=start)
    return Entry(envelope, message)


def read_entry(path: str | os.PathLike[str]) -> Entry:
    with open(path, "rb") as f:
        return decode_entry(f.read(), path)


def read_envelope(path: str | os.PathLike[str]) -> tuple[Envelope, int]:
    """The envelope and file size of an entry, without reading its message."""
    with open(path, "rb") as f:
        head = f.read(4096)
        elen, mlen, _ = _parse_header(head, path)
        if ENTRY_HEADER_SIZE + elen > len(head):
            head += f.read(ENTRY_HEADER_SIZE + elen - len(head))
        size = os.fstat(f.fileno()).st_size
    envelope = _check_head(head, elen, path)
    if size != ENTRY_HEADER_SIZE + elen + mlen:
        raise CorruptionError(f"spool entry is {size} bytes, header says "
                              f"{ENTRY_HEADER_SIZE + elen + mlen}", path=path)
    return envelope, size


# -- names -------------------------------------------------------------------------


def _safe_host(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", host)[:64] or "_"


def new_entry_id(host: str, time_us: int | None = None) -> str:
    t = _fs.now_us() if time_us is None else time_us
    return f"{t:016x}-{secrets.token_hex(8)}-{_safe_host(host)}"


def new_worker_id(host: str) -> str:
    return f"{_safe_host(host).lstrip('.') or '_'}-{os.getpid()}-{secrets.token_hex(4)}"


def entry_name(entry_id: str, attempts: int) -> str:
    return f"{entry_id}.a{attempts}"


def shard_of_entry(entry_id: str) -> str:
    return _fs.shard_of(entry_id)


