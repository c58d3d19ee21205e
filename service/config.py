"""Gateway configuration: the only module that reads the environment.

Every option is a `GATEWAY_*` environment variable with a matching CLI flag (the variable
without the prefix, in kebab-case); the flag wins. Both are generated from one table,
`OPTIONS`, which also feeds `--help` and `reference_markdown()`. An empty value means the
default. Anything invalid raises `ConfigError(variable, problem)`.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

from service.errors import ConfigError
from service.model import Namespace

ENV_PREFIX = "GATEWAY_"
INSTANCE_ID_MAX = 100
_INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9._:-]+")
_PEM_MARKER = "-----BEGIN"


def default_instance_id() -> str:
    """`<hostname>-<pid>`, with characters an AMQP queue name should not carry replaced."""
    host = re.sub(r"[^A-Za-z0-9._:-]", "-", socket.gethostname()) or "gateway"
    suffix = f"-{os.getpid()}"
    return host[: INSTANCE_ID_MAX - len(suffix)] + suffix


@dataclass(frozen=True, slots=True)
class Config:
    """Validated settings; field names carry their unit (`_s` seconds, `_bytes`).

    Secrets (`jwt_secret`, `api_keys`, `amqp_url`, which may hold a password) stay out of repr.
    """

    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    amqp_url: str = field(default="", repr=False)
    exchange: str = "realtime.events"
    upstream_exchange: str = "realtime.upstream"
    instance_id: str = field(default_factory=default_instance_id)
    bindings: str = "auto"
    user_bindings_max: int = 1000
    jwt_secret: str = field(default="", repr=False)
    jwt_public_key: str = field(default="", repr=False)
    jwks_file: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    public_namespaces: frozenset[Namespace] = frozenset()
    namespaces: frozenset[Namespace] = frozenset(Namespace)
    allowed_origins: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    max_message_bytes: int = 65536
    rate_limit_per_s: float = 20.0
    rate_limit_burst: int = 40
    max_connections: int = 0
    max_connections_per_user: int = 20
    send_queue_bytes: int = 1048576
    heartbeat_s: float = 25.0
    conflate: bool = True
    drain_s: float = 10.0
    recovery_window_s: float = 600.0
    recovery_stream: str = "realtime.notifications"
    log_level: str = "info"
    log_format: str = "json"
    amqp_prefetch: int = 5000
    binding_grace_s: float = 5.0
    demo: bool = False
    demo_with_broker: bool = False

    @property
    def jwt_configured(self) -> bool:
        """Whether any JWT key (secret, PEM public key or JWKS file) is configured."""
        return bool(self.jwt_secret or self.jwt_public_key or self.jwks_file)


# --- parsers: raw text -> value, or ValueError(problem) -------------------------------------

Parser = Callable[[str], object]


def _text(raw: str) -> str:
    return raw.strip()


def _secret(raw: str) -> str:
    return raw  # taken as given: stripping would change the key


def _int(low: int, high: int | None = None) -> Parser:
    bounds = f"from {low} to {high}" if high is not None else f">= {low}"

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise ValueError(f"must be an integer {bounds}, got {raw!r}")
        return value

    return parse


def _float(low: float, *, strict: bool = False) -> Parser:
    bounds = f"> {low:g}" if strict else f">= {low:g}"

    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise ValueError(f"must be a number {bounds}, got {raw!r}")
        return value

    return parse


def _choice(*choices: str) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"must be one of 1/0, true/false, yes/no, on/off, got {raw!r}")


def _items(raw: str) -> list[str]:
    """Comma list: stripped, empty items dropped, duplicates dropped (first one kept)."""
    return list(dict.fromkeys(item for item in (i.strip() for i in raw.split(",")) if item))


def _namespaces(*, required: bool) -> Parser:
    known = ", ".join(Namespace)

    def parse(raw: str) -> frozenset[Namespace]:
        result: set[Namespace] = set()
        for item in _items(raw):
            try:
                result.add(Namespace(item.lower()))
            except ValueError:
                raise ValueError(f"unknown namespace {item!r} (expected {known})") from None
        if required and not result:
            raise ValueError(f"must name at least one of {known}")
        return frozenset(result)

    return parse


def _origins(raw: str) -> tuple[str, ...]:
    origins: list[str] = []
    for item in _items(raw):
        origin = item.rstrip("/").lower()
        if origin != "*":
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ValueError(f"{item!r} is not an origin (http[s]://host[:port]) or '*'")
        origins.append(origin)
    return tuple(dict.fromkeys(origins))


def _keys(raw: str) -> tuple[str, ...]:
    return tuple(_items(raw))


def _amqp_url(raw: str) -> str:
    # Never echo the value in a problem: it may hold a password.
    value = raw.strip()
    try:
        parsed = URL(value)
        host, _ = parsed.host, parsed.port  # yarl checks the port when it is read
    except ValueError:
        raise ValueError("is not a valid URL (check the port and the characters)") from None
    if parsed.scheme not in ("amqp", "amqps") or not host:
        raise ValueError("must be an amqp:// or amqps:// URL with a host")
    return value


def _exchange(raw: str) -> str:
    value = raw.strip()
    if len(value.encode()) > 255 or value.startswith("amq."):
        raise ValueError(f"must be at most 255 bytes and not start with 'amq.', got {raw!r}")
    return value


def _instance_id(raw: str) -> str:
    value = raw.strip()
    if problem := instance_id_problem(value):
        raise ValueError(f"{problem}, got {raw!r}")
    return value


def instance_id_problem(value: str) -> str | None:
    """Why `value` cannot name this instance (and its AMQP queue), or None when it can."""
    if not _INSTANCE_ID_RE.fullmatch(value) or len(value) > INSTANCE_ID_MAX:
        return f"must be 1 to {INSTANCE_ID_MAX} characters of A-Z a-z 0-9 . _ : -"
    return None


def _rate_limit(raw: str) -> tuple[float, int]:
    problem = f"must be RATE/BURST with RATE > 0 and BURST an integer >= 1, got {raw!r}"
    rate_text, sep, burst_text = raw.strip().partition("/")
    try:
        rate, burst = float(rate_text), int(burst_text)
    except ValueError:
        raise ValueError(problem) from None
    if not sep or not math.isfinite(rate) or rate <= 0 or burst < 1:
        raise ValueError(problem)
    return rate, burst


def _pem(raw: str) -> str:
    """Inline PEM text, or the path of a file holding it."""
    if raw.lstrip().startswith(_PEM_MARKER):
        return raw.strip() + "\n"
    path = raw.strip()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read PEM file {path!r}: {_reason(e)}") from None
    if _PEM_MARKER not in text:
        raise ValueError(f"file {path!r} holds no PEM key")
    return text


def _jwks_file(raw: str) -> str:
    """The path of a readable file; its keys are parsed once, by the authenticator."""
    path = raw.strip()
    try:
        with open(path, encoding="utf-8") as f:
            f.read(1)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read JWKS file {path!r}: {_reason(e)}") from None
    return path


def _reason(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


# --- the option table ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its variable, the Config field(s) it fills, how to parse it, its docs.

    The default value is the Config field's default, written once there; `default` is its
    text for help and docs.
    """

    env: str
    fields: tuple[str, ...]
    parse: Parser
    default: str
    help: str
    metavar: str = "VALUE"

    @property
    def flag(self) -> str:
        """`GATEWAY_MAX_MESSAGE_BYTES` → `--max-message-bytes`."""
        return "--" + self.env.removeprefix(ENV_PREFIX).lower().replace("_", "-")

    @property
    def is_bool(self) -> bool:
        """Whether the option is a switch (`--demo` / `--no-demo`)."""
        return self.parse is _bool


def _default_text(value: object) -> str:
    """A Config default as a variable would spell it (`20.0` → `20`, a set → a comma list)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, frozenset | tuple):
        return ",".join(sorted(str(item) for item in value))
    return str(value)


def _opt(
    env: str,
    name: str | tuple[str, ...],
    parse: Parser,
    help: str,
    metavar: str = "VALUE",
    *,
    shown_default: str | None = None,
) -> Option:
    """An option whose default is the Config field's (several fields: joined with `/`)."""
    names = (name,) if isinstance(name, str) else name
    if shown_default is None:
        fields = Config.__dataclass_fields__
        shown_default = "/".join(_default_text(fields[n].default) for n in names)
    return Option(ENV_PREFIX + env, names, parse, shown_default, help, metavar)


OPTIONS: tuple[Option, ...] = (
    _opt("HOST", "host", _text, "listen address", "HOST"),
    _opt("PORT", "port", _int(0, 65535), "listen port (0 = any free port)", "PORT"),
    _opt("WORKERS", "workers", _int(1), "worker processes sharing the port", "N"),
    _opt(
        "AMQP_URL",
        "amqp_url",
        _amqp_url,
        "RabbitMQ URL; empty = embedded in-memory backbone (single instance)",
        "URL",
    ),
    _opt(
        "EXCHANGE",
        "exchange",
        _exchange,
        "topic exchange services publish to",
        "NAME",
    ),
    _opt(
        "UPSTREAM_EXCHANGE",
        "upstream_exchange",
        _exchange,
        "topic exchange client events are published to",
        "NAME",
    ),
    _opt(
        "INSTANCE_ID",
        "instance_id",
        _instance_id,
        "names this instance's queue and log lines",
        "ID",
        shown_default="hostname-pid",  # computed at start (default_instance_id)
    ),
    _opt(
        "BINDINGS",
        "bindings",
        _choice("auto", "dynamic", "wildcard"),
        "how the instance queue is bound: auto, dynamic or wildcard",
        "MODE",
    ),
    _opt(
        "USER_BINDINGS_MAX",
        "user_bindings_max",
        _int(0),
        "in auto mode, above this many local users bind notification.user.# once",
        "N",
    ),
    _opt(
        "JWT_SECRET",
        "jwt_secret",
        _secret,
        "HS256 secret; prefer the variable (flags show up in ps)",
        "SECRET",
    ),
    _opt(
        "JWT_PUBLIC_KEY",
        "jwt_public_key",
        _pem,
        "PEM public key (RS256/ES256), inline or the path of a PEM file",
        "PEM",
    ),
    _opt("JWKS_FILE", "jwks_file", _jwks_file, "JWKS file for RS256/ES256", "PATH"),
    _opt("JWT_AUDIENCE", "jwt_audience", _text, "required `aud` claim, when set", "AUD"),
    _opt("JWT_ISSUER", "jwt_issuer", _text, "required `iss` claim, when set", "ISS"),
    _opt(
        "PUBLIC_NAMESPACES",
        "public_namespaces",
        _namespaces(required=False),
        "comma list of namespaces that accept connections without a token (dashboard only)",
        "LIST",
    ),
    _opt(
        "NAMESPACES",
        "namespaces",
        _namespaces(required=True),
        "comma list of namespaces served",
        "LIST",
    ),
    _opt(
        "ALLOWED_ORIGINS",
        "allowed_origins",
        _origins,
        "comma list of browser origins allowed to connect; '*' only when set explicitly",
        "LIST",
    ),
    _opt(
        "API_KEYS",
        "api_keys",
        _keys,
        "comma list of keys for POST /api/publish; empty = endpoint answers 404",
        "LIST",
    ),
    _opt(
        "MAX_MESSAGE_BYTES",
        "max_message_bytes",
        _int(1024),
        "max inbound frame size in bytes",
        "BYTES",
    ),
    _opt(
        "RATE_LIMIT",
        ("rate_limit_per_s", "rate_limit_burst"),
        _rate_limit,
        "inbound messages per second / burst, per connection",
        "RATE/BURST",
    ),
    _opt(
        "MAX_CONNECTIONS",
        "max_connections",
        _int(0),
        "max connections per process (0 = no limit); beyond it upgrades get 503",
        "N",
    ),
    _opt(
        "MAX_CONNECTIONS_PER_USER",
        "max_connections_per_user",
        _int(1),
        "max connections per user per process; beyond it upgrades get 429",
        "N",
    ),
    _opt(
        "SEND_QUEUE_BYTES",
        "send_queue_bytes",
        _int(1024),
        "per-connection outbound buffer in bytes; overflow closes with 4008",
        "BYTES",
    ),
    _opt(
        "HEARTBEAT_SECONDS",
        "heartbeat_s",
        _float(0, strict=True),
        "ping a peer silent this long; close it if no pong within half that",
        "SECONDS",
    ),
    _opt(
        "CONFLATE",
        "conflate",
        _bool,
        "dashboard conflation: a slow client gets the newest update of each topic; "
        "off queues every update",
        "BOOL",
        shown_default="on",  # the contract's spelling
    ),
    _opt(
        "DRAIN_SECONDS",
        "drain_s",
        _float(0),
        "on SIGTERM, spread socket closes over this window",
        "SECONDS",
    ),
    _opt(
        "RECOVERY_WINDOW_SECONDS",
        "recovery_window_s",
        _float(0),
        "how far back a reconnecting notifications client can recover",
        "SECONDS",
    ),
    _opt(
        "RECOVERY_STREAM",
        "recovery_stream",
        _exchange,
        "RabbitMQ stream queue that keeps notifications for recovery (RabbitMQ backbone only)",
        "NAME",
    ),
    _opt(
        "LOG_LEVEL",
        "log_level",
        _choice("debug", "info", "warning", "error"),
        "debug, info, warning or error",
        "LEVEL",
    ),
    _opt("LOG_FORMAT", "log_format", _choice("json", "console"), "json or console", "FORMAT"),
    _opt(
        "AMQP_PREFETCH",
        "amqp_prefetch",
        _int(1),
        "unacknowledged AMQP deliveries in flight",
        "N",
    ),
    _opt(
        "BINDING_GRACE_SECONDS",
        "binding_grace_s",
        _float(0),
        "how long an unneeded binding lingers before it is removed",
        "SECONDS",
    ),
    _opt(
        "DEMO",
        "demo",
        _bool,
        "serve /demo/ (page, dev token endpoint) and a synthetic producer; local use only",
        "BOOL",
    ),
    _opt(
        "DEMO_WITH_BROKER",
        "demo_with_broker",
        _bool,
        "allow demo mode together with GATEWAY_AMQP_URL (refused otherwise: a broker means a "
        "real deployment, where /demo/token must not mint tokens)",
        "BOOL",
    ),
)
OPTIONS_BY_ENV: Mapping[str, Option] = {option.env: option for option in OPTIONS}


# --- public API ------------------------------------------------------------------------------


def _shown_default(option: Option) -> str:
    return option.default or "empty"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option; values land under the variable's name, absent ones stay unset."""
    group = parser.add_argument_group("configuration (flags override GATEWAY_* variables)")
    for option in OPTIONS:
        help_text = f"{option.help} (env {option.env}, default {_shown_default(option)})"
        if option.is_bool:
            group.add_argument(
                option.flag,
                dest=option.env,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text.replace("%", "%%"),
            )
        else:
            group.add_argument(
                option.flag,
                dest=option.env,
                default=argparse.SUPPRESS,
                metavar=option.metavar,
                help=help_text.replace("%", "%%"),
            )


def from_namespace(ns: argparse.Namespace) -> dict[str, str]:
    """The flags given on the command line, as raw values keyed by variable name."""
    overrides: dict[str, str] = {}
    for option in OPTIONS:
        if hasattr(ns, option.env):
            value = getattr(ns, option.env)
            overrides[option.env] = str(value).lower() if isinstance(value, bool) else str(value)
    return overrides


def load(environ: Mapping[str, str], overrides: Mapping[str, str] | None = None) -> Config:
    """Build and validate a Config from the environment, with flag values winning.

    An empty value (in the environment or a flag) means the option's default.
    """
    overrides = overrides or {}
    for name in overrides:
        if name not in OPTIONS_BY_ENV:
            raise ConfigError(name, "unknown option")
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = overrides[option.env] if option.env in overrides else environ.get(option.env, "")
        if not raw.strip():
            continue
        try:
            parsed = option.parse(raw)
        except ValueError as e:
            raise ConfigError(option.env, str(e)) from None
        parts = parsed if len(option.fields) > 1 and isinstance(parsed, tuple) else (parsed,)
        values.update(zip(option.fields, parts, strict=True))
    config = Config(**values)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks, also for a Config built directly (e.g. with `dataclasses.replace`)."""
    if problem := instance_id_problem(config.instance_id):
        raise ConfigError("GATEWAY_INSTANCE_ID", problem)
    if Namespace.NOTIFICATIONS in config.public_namespaces:
        raise ConfigError(
            "GATEWAY_PUBLIC_NAMESPACES", "notifications requires a token and cannot be public"
        )
    if config.demo and config.amqp_url and not config.demo_with_broker:
        raise ConfigError(
            "GATEWAY_DEMO",
            "demo mode mints tokens for any user and GATEWAY_AMQP_URL is set (a real "
            "deployment?): turn demo mode off, or set GATEWAY_DEMO_WITH_BROKER=1 to run both",
        )
    private = config.namespaces - config.public_namespaces
    if not config.jwt_configured and private:
        raise ConfigError(
            "GATEWAY_JWT_SECRET",
            "no JWT key is configured (set GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY or "
            f"GATEWAY_JWKS_FILE) and namespace(s) {_names(private)} are not public",
        )


def _names(namespaces: Iterable[Namespace]) -> str:
    return ", ".join(sorted(namespaces))


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """`GATEWAY_*` variables that are not options (likely typos), for the caller to warn about."""
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in OPTIONS_BY_ENV)


def closest_option(name: str) -> str | None:
    """The variable `name` most likely meant (`GATEWAY_JWT_SECRETT` → `GATEWAY_JWT_SECRET`)."""
    # Compared without the prefix, which every name shares and which would make any match.
    known = {env.removeprefix(ENV_PREFIX): env for env in OPTIONS_BY_ENV}
    matches = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), known, n=1, cutoff=0.6)
    return known[matches[0]] if matches else None


def reference_markdown() -> str:
    """A Markdown table of every option: variable | flag | default | meaning."""
    lines = ["| variable | flag | default | meaning |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        default = f"`{option.default}`" if option.default else "empty"
        meaning = option.help.replace("|", "\\|")
        lines.append(f"| `{option.env}` | `{option.flag}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"
