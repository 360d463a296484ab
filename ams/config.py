"""Configuration: one TOML file, loaded into frozen, typed dataclasses.

Where the file comes from, in order: ``--config FILE`` on the command line,
``$AMS_CONFIG``, then ``./ams.toml``.  Every key is checked against the
schema below; an unknown key, a value of the wrong type or a missing required
setting raises :class:`ConfigError` with the dotted key name, which the CLI
prints as one line.

The schema is the dataclasses themselves: a section is a dataclass, a key is
a field, and the field's type is what the value must be.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ams.errors import ConfigError

LockMethod = Literal["fcntl", "dotlock"]
FsyncPolicy = Literal["always", "never"]


@dataclass(frozen=True)
class StoreConfig:
    """The shared store: the one place every host writes to."""

    root: Path
    #: How appends to one mailbox are serialised: ``fcntl`` (POSIX record
    #: locks, where the filesystem honours them across hosts) or ``dotlock``
    #: (an O_EXCL lock file with a lease, for filesystems without locks).
    lock_method: LockMethod = "fcntl"
    #: ``always``: nothing is acknowledged before it is on stable storage.
    #: ``never``: for tests and benchmarks that measure everything else.
    fsync: FsyncPolicy = "always"
    #: A mailbox log rolls over to a new segment once a segment passes this.
    segment_bytes: int = 64 * 1024 * 1024
    #: A dotlock, a worker claim or a heartbeat not renewed for this long
    #: (plus ``clock_skew``) is considered abandoned.
    lease_seconds: float = 30.0
    #: How far apart the clocks of two hosts may be.
    clock_skew: float = 5.0
    #: How long superseded segments are kept after compaction, for readers
    #: that still hold them open.
    compaction_grace_seconds: float = 3600.0
    #: Seconds to wait for a mailbox lock before giving up.
    lock_timeout: float = 60.0
    #: The roles refuse to start on a network, cluster or FUSE filesystem
    #: for which this host has no two-host ``ams doctor`` verdict (and
    #: always on one it found unsafe, or with a lock method it ruled out).
    #: False: start without a verdict (a verdict that says no still stops them).
    require_doctor: bool = True


@dataclass(frozen=True)
class HostConfig:
    """This host: its name in the pool and its local (never shared) disk."""

    #: Unique among the hosts that share the store.
    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    #: Local indexes (LMDB) live here; it must not be on the shared store.
    cache_dir: Path = Path("/var/cache/ams")


@dataclass(frozen=True)
class MailConfig:
    domains: tuple[str, ...] = ()
    #: Where ``user+detail`` is split.
    recipient_delimiter: str = "+"
    #: The local part prefix that addresses a bboard, ``bb+name@domain``.
    bboard_prefix: str = "bb+"


@dataclass(frozen=True)
class ListenConfig:
    smtp: str = "127.0.0.1:2525"
    submission: str = "127.0.0.1:5587"
    imap: str = "127.0.0.1:1143"
    imaps: str = ""


@dataclass(frozen=True)
class TLSConfig:
    certificate: Path | None = None
    key: Path | None = None
    #: Whether AUTH/LOGIN are allowed before STARTTLS.
    allow_plaintext_auth: bool = False


@dataclass(frozen=True)
class LimitsConfig:
    max_message_bytes: int = 50 * 1024 * 1024
    max_line_bytes: int = 1000
    max_recipients: int = 1000
    max_connections: int = 1000
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    max_bad_commands: int = 20
    delivery_attempts: int = 10
    #: IMAP: seconds without a command (IDLE included) before the bridge
    #: logs a client out.  RFC 3501 asks for at least 30 minutes.
    imap_autologout: float = 1800.0


@dataclass(frozen=True)
class ImapConfig:
    """The IMAP bridge."""

    #: Seconds between checks of the logs that IDLE sessions (and sessions
    #: between commands) watch: news from other hosts and processes reaches
    #: clients within about this.  Each watched log costs one stat per check
    #: however many sessions watch it.
    idle_poll: float = 0.2


@dataclass(frozen=True)
class SubmissionConfig:
    """SMTP submission (RFC 6409) for the store's users."""

    #: File a copy of every submitted message into the sender's Sent mailbox
    #: (the mailbox with special use \\Sent; none filed if there is none).
    save_sent: bool = False


@dataclass(frozen=True)
class OutboundConfig:
    """The outbound gateways: routes, retries, timeouts."""

    #: The name given in EHLO (default: ``host.name``).
    helo_name: str = ""
    #: Static routes, domain -> ``HOST:PORT`` (or ``HOST``, port 25); several
    #: hosts are tried in order when separated by commas.  A domain
    #: ``.example.org`` also covers its subdomains.
    routes: dict[str, str] = field(default_factory=dict)
    #: Where everything without a route goes instead of its MX, if set.
    smarthost: str = ""
    #: Look up MX records (dnspython) for domains without a route.
    dns: bool = True
    #: Seconds to wait for one DNS answer.
    dns_timeout: float = 10.0
    #: Waits before successive retries of a temporary failure; the last one
    #: repeats until ``max_age``.
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
    #: A message still undelivered this long after it was queued is bounced.
    max_age: float = 5 * 86400.0
    #: Deferred entries are due in buckets of this many seconds.
    bucket_seconds: int = 60
    #: Use STARTTLS when the remote offers it.
    starttls: bool = True
    #: Verify the remote certificate (off: opportunistic TLS, RFC 7435).
    tls_verify: bool = False
    connect_timeout: float = 30.0
    #: RFC 5321 4.5.3.2 asks for 5 minutes per command and 10 for the final dot.
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    #: Messages one gateway delivers at once.
    concurrency: int = 16


@dataclass(frozen=True)
class BboardConfig:
    """Bulletin boards (the posting address prefix is ``mail.bboard_prefix``)."""

    #: Seconds between expiry runs under ``ams serve`` (0: never run there).
    expire_interval: float = 3600.0


@dataclass(frozen=True)
class Config:
    store: StoreConfig
    host: HostConfig = field(default_factory=HostConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    bboard: BboardConfig = field(default_factory=BboardConfig)
    #: The file this was loaded from, if any.
    path: Path | None = None

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


_SKIP = {"path"}


def default_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("AMS_CONFIG")
    if env:
        return Path(env)
    return Path("ams.toml")


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the config file; raise ConfigError naming the key."""
    p = default_config_path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no config file at {p} (run 'ams init', pass --config FILE or set AMS_CONFIG)"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    cfg = config_from_dict(data, source=str(p))
    cfg = dataclasses.replace(cfg, path=p.resolve())
    # Relative paths in the file are relative to the file, not the cwd.
    base = p.resolve().parent
    store = dataclasses.replace(cfg.store, root=_anchor(base, cfg.store.root))
    host = dataclasses.replace(cfg.host, cache_dir=_anchor(base, cfg.host.cache_dir))
    return dataclasses.replace(cfg, store=store, host=host)


def _anchor(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p)


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> Config:
    return _build(Config, data, prefix="", source=source)


def _build(cls: type[Any], data: Any, *, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [{prefix.rstrip('.')}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _SKIP}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required setting '{key}'")
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], prefix=key + ".", source=source)
        else:
            kwargs[name] = _coerce(tp, data[name], key=key, source=source)
    obj = cls(**kwargs)
    _check(obj, prefix, source)
    return obj


def _coerce(tp: Any, value: Any, *, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{source}: '{key}' must be {_describe(tp)}, not {value!r}")
    if origin in (types.UnionType, typing.Union):
        if type(None) in args and value == "":
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key=key, source=source)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise bad
    if origin is tuple:
        if not isinstance(value, list):
            raise bad
        return tuple(_coerce(args[0], v, key=key, source=source) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(args[1], v, key=f"{key}.{k}", source=source)
                for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is Path:
        if isinstance(value, str) and value:
            return Path(value)
        raise bad
    raise bad  # pragma: no cover - a schema type we do not know


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"a table of {_describe(args[1])}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Path: "a path"}.get(tp, str(tp))


def _check(obj: Any, prefix: str, source: str) -> None:
    """Range checks that the type alone does not express."""
    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{source}: '{prefix}{key}' {what}")

    if isinstance(obj, StoreConfig):
        need(obj.segment_bytes >= 4096, "segment_bytes", "must be at least 4096")
        need(obj.lease_seconds > 0, "lease_seconds", "must be positive")
        need(obj.clock_skew >= 0, "clock_skew", "must not be negative")
        need(obj.lock_timeout > 0, "lock_timeout", "must be positive")
    elif isinstance(obj, HostConfig):
        need(bool(obj.name) and "/" not in obj.name and not obj.name.startswith("."),
             "name", "must be a non-empty name without '/'")
    elif isinstance(obj, MailConfig):
        for d in obj.domains:
            need(bool(d) and " " not in d and "@" not in d, "domains", f"has a bad domain {d!r}")
    elif isinstance(obj, OutboundConfig):
        need(all(t >= 0 for t in obj.retry_schedule) and bool(obj.retry_schedule),
             "retry_schedule", "must be a non-empty list of non-negative seconds")
        for name in ("max_age", "dns_timeout", "connect_timeout", "command_timeout",
                     "data_timeout", "bucket_seconds", "concurrency"):
            need(getattr(obj, name) > 0, name, "must be positive")
        need(3600 % obj.bucket_seconds == 0, "bucket_seconds", "must divide 3600")
    elif isinstance(obj, BboardConfig):
        need(obj.expire_interval >= 0, "expire_interval", "must not be negative")
    elif isinstance(obj, ImapConfig):
        need(0 < obj.idle_poll <= 60, "idle_poll", "must be more than 0 and at most 60 seconds")
    elif isinstance(obj, LimitsConfig):
        for name in ("max_message_bytes", "max_line_bytes", "max_recipients",
                     "max_connections", "max_bad_commands", "delivery_attempts",
                     "imap_autologout"):
            need(getattr(obj, name) > 0, name, "must be positive")


def render_config(cfg: Config) -> str:
    """The config as TOML text (what ``ams init`` writes)."""
    out: list[str] = []
    for f in dataclasses.fields(cfg):
        if f.name in _SKIP:
            continue
        section = getattr(cfg, f.name)
        out.append(f"[{f.name}]")
        for sf in dataclasses.fields(section):
            out.append(f"{sf.name} = {_toml_value(getattr(section, sf.name))}")
        out.append("")
    return "\n".join(out)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if v is None:
        return '""'
    if isinstance(v, tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(x)}"
                               for k, x in v.items()) + "}"
    s = str(v)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
