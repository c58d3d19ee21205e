"""service.config: defaults, parsing, flags, validation and the generated docs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest

from service import config
from service.app import build_authenticator
from service.config import OPTIONS, Config, add_arguments, from_namespace, load, validate
from service.errors import ConfigError
from service.model import Namespace

CONTRACT = Path(__file__).parents[3] / "shared/spec/contract.md"
SECRET = {"GATEWAY_JWT_SECRET": "s3cret"}
PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gw")
    add_arguments(p)
    return p


def test_defaults_match_contract_table() -> None:
    c = load(SECRET)
    assert (c.host, c.port, c.workers) == ("0.0.0.0", 8080, 1)
    assert c.amqp_url == ""
    assert (c.exchange, c.upstream_exchange) == ("realtime.events", "realtime.upstream")
    assert c.bindings == "auto"
    assert c.user_bindings_max == 1000
    assert (c.jwt_public_key, c.jwks_file, c.jwt_audience, c.jwt_issuer) == ("", "", "", "")
    assert c.public_namespaces == frozenset()
    assert c.namespaces == {Namespace.DASHBOARD, Namespace.NOTIFICATIONS}
    assert (c.allowed_origins, c.api_keys) == ((), ())
    assert c.max_message_bytes == 65536
    assert (c.rate_limit_per_s, c.rate_limit_burst) == (20.0, 40)
    assert (c.max_connections, c.max_connections_per_user) == (0, 20)
    assert c.send_queue_bytes == 1048576
    assert (c.heartbeat_s, c.drain_s, c.recovery_window_s) == (25.0, 10.0, 600.0)
    assert (c.log_level, c.log_format) == ("info", "json")
    assert (c.amqp_prefetch, c.binding_grace_s, c.demo) == (5000, 5.0, False)
    assert re.fullmatch(r"[A-Za-z0-9._:-]+-\d+", c.instance_id)


def test_bare_config_constructs_with_defaults() -> None:
    c = Config()
    assert c.port == 8080
    assert c.instance_id
    assert not c.jwt_configured


def test_every_field_is_filled_by_exactly_one_option() -> None:
    covered = [name for option in OPTIONS for name in option.fields]
    assert sorted(covered) == sorted(f.name for f in dataclasses.fields(Config))
    assert len({option.env for option in OPTIONS}) == len(OPTIONS)


@pytest.mark.parametrize(
    "option",
    [o for o in OPTIONS if o.env != "GATEWAY_INSTANCE_ID"],  # computed from hostname and pid
    ids=lambda o: o.env,
)
def test_documented_default_parses_to_the_config_default(option: config.Option) -> None:
    defaults = Config()
    expected = tuple(getattr(defaults, name) for name in option.fields)
    if not option.default:
        assert all(value in ("", (), frozenset()) for value in expected)
        return
    parsed = option.parse(option.default)
    assert (parsed if len(option.fields) > 1 else (parsed,)) == expected


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    [
        ("GATEWAY_HOST", " 127.0.0.1 ", "host", "127.0.0.1"),
        ("GATEWAY_PORT", "9000", "port", 9000),
        ("GATEWAY_PORT", "0", "port", 0),
        ("GATEWAY_WORKERS", "4", "workers", 4),
        (
            "GATEWAY_AMQP_URL",
            "amqp://guest:guest@localhost/",
            "amqp_url",
            "amqp://guest:guest@localhost/",
        ),
        ("GATEWAY_EXCHANGE", "ex.down", "exchange", "ex.down"),
        ("GATEWAY_INSTANCE_ID", "pod-1:a_b.c", "instance_id", "pod-1:a_b.c"),
        ("GATEWAY_BINDINGS", "Wildcard", "bindings", "wildcard"),
        ("GATEWAY_USER_BINDINGS_MAX", "0", "user_bindings_max", 0),
        ("GATEWAY_JWT_AUDIENCE", "aud", "jwt_audience", "aud"),
        ("GATEWAY_PUBLIC_NAMESPACES", "dashboard", "public_namespaces", {Namespace.DASHBOARD}),
        ("GATEWAY_NAMESPACES", " dashboard , ", "namespaces", {Namespace.DASHBOARD}),
        (
            "GATEWAY_ALLOWED_ORIGINS",
            "https://a.example/, http://B.example:8080,,https://a.example",
            "allowed_origins",
            ("https://a.example", "http://b.example:8080"),
        ),
        ("GATEWAY_ALLOWED_ORIGINS", "*", "allowed_origins", ("*",)),
        ("GATEWAY_API_KEYS", "k1, k2,", "api_keys", ("k1", "k2")),
        ("GATEWAY_MAX_MESSAGE_BYTES", "1024", "max_message_bytes", 1024),
        ("GATEWAY_RATE_LIMIT", "2.5/7", "rate_limit_per_s", 2.5),
        ("GATEWAY_RATE_LIMIT", "2.5/7", "rate_limit_burst", 7),
        ("GATEWAY_MAX_CONNECTIONS", "5000", "max_connections", 5000),
        ("GATEWAY_MAX_CONNECTIONS_PER_USER", "1", "max_connections_per_user", 1),
        ("GATEWAY_SEND_QUEUE_BYTES", "4096", "send_queue_bytes", 4096),
        ("GATEWAY_HEARTBEAT_SECONDS", "0.5", "heartbeat_s", 0.5),
        ("GATEWAY_DRAIN_SECONDS", "0", "drain_s", 0.0),
        ("GATEWAY_RECOVERY_WINDOW_SECONDS", "60", "recovery_window_s", 60.0),
        ("GATEWAY_LOG_LEVEL", "DEBUG", "log_level", "debug"),
        ("GATEWAY_LOG_FORMAT", "console", "log_format", "console"),
        ("GATEWAY_AMQP_PREFETCH", "1", "amqp_prefetch", 1),
        ("GATEWAY_BINDING_GRACE_SECONDS", "0", "binding_grace_s", 0.0),
        ("GATEWAY_DEMO", "YES", "demo", True),
        ("GATEWAY_DEMO", "on", "demo", True),
        ("GATEWAY_DEMO", "0", "demo", False),
    ],
)
def test_env_values_are_parsed(variable: str, raw: str, field: str, expected: object) -> None:
    assert getattr(load({**SECRET, variable: raw}), field) == expected


def test_empty_value_means_default() -> None:
    c = load({**SECRET, "GATEWAY_PORT": "", "GATEWAY_NAMESPACES": " ", "GATEWAY_RATE_LIMIT": ""})
    assert (c.port, c.rate_limit_per_s, c.rate_limit_burst) == (8080, 20.0, 40)
    assert c.namespaces == frozenset(Namespace)


def test_flag_overrides_env() -> None:
    ns = parser().parse_args(["--port", "9001", "--log-format", "console", "--demo"])
    overrides = from_namespace(ns)
    assert overrides == {
        "GATEWAY_PORT": "9001",
        "GATEWAY_LOG_FORMAT": "console",
        "GATEWAY_DEMO": "true",
    }
    c = load({**SECRET, "GATEWAY_PORT": "9000", "GATEWAY_WORKERS": "3"}, overrides)
    assert (c.port, c.workers, c.log_format, c.demo) == (9001, 3, "console", True)


def test_no_flag_given_means_no_override() -> None:
    assert from_namespace(parser().parse_args([])) == {}
    assert from_namespace(parser().parse_args(["--no-demo"])) == {"GATEWAY_DEMO": "false"}


def test_flags_survive_subcommand_parsers() -> None:
    parent = argparse.ArgumentParser(add_help=False)
    add_arguments(parent)
    main = argparse.ArgumentParser(parents=[parent])
    sub = main.add_subparsers(dest="command")
    sub.add_parser("serve", parents=[parent])
    ns = main.parse_args(["--port", "1234", "serve", "--workers", "2"])
    assert from_namespace(ns) == {"GATEWAY_PORT": "1234", "GATEWAY_WORKERS": "2"}


def test_flag_names_are_generated_from_variables() -> None:
    ns = parser().parse_args(["--max-message-bytes", "100000"])
    assert load(SECRET, from_namespace(ns)).max_message_bytes == 100000
    flags = {option.env: option.flag for option in OPTIONS}
    assert flags["GATEWAY_JWT_PUBLIC_KEY"] == "--jwt-public-key"
    assert flags["GATEWAY_RATE_LIMIT"] == "--rate-limit"
    assert flags["GATEWAY_HEARTBEAT_SECONDS"] == "--heartbeat-seconds"
    assert flags["GATEWAY_RECOVERY_WINDOW_SECONDS"] == "--recovery-window-seconds"


def test_help_names_variable_and_default() -> None:
    text = " ".join(parser().format_help().split())
    assert "max inbound frame size in bytes (env GATEWAY_MAX_MESSAGE_BYTES, default 65536)" in text


def test_every_contract_variable_has_a_flag() -> None:
    if not CONTRACT.is_file():
        pytest.skip(f"contract not found at {CONTRACT}")
    section = CONTRACT.read_text(encoding="utf-8").split("\n## 2.")[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    variables = set(re.findall(r"`(GATEWAY_[A-Z0-9_]+)`", "\n".join(table)))
    assert len(variables) > 20
    flags = {action.dest: action.option_strings for action in parser()._actions}
    for variable in sorted(variables):
        expected = "--" + variable.removeprefix("GATEWAY_").lower().replace("_", "-")
        assert expected in flags.get(variable, []), variable


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("GATEWAY_PORT", "abc"),
        ("GATEWAY_PORT", "70000"),
        ("GATEWAY_PORT", "-1"),
        ("GATEWAY_PORT", "80.5"),
        ("GATEWAY_WORKERS", "0"),
        ("GATEWAY_AMQP_URL", "http://localhost"),
        ("GATEWAY_EXCHANGE", "amq.topic"),
        ("GATEWAY_INSTANCE_ID", "has space"),
        ("GATEWAY_INSTANCE_ID", "a/b"),
        ("GATEWAY_INSTANCE_ID", "x" * 101),
        ("GATEWAY_BINDINGS", "foo"),
        ("GATEWAY_USER_BINDINGS_MAX", "-1"),
        ("GATEWAY_PUBLIC_NAMESPACES", "chat"),
        ("GATEWAY_PUBLIC_NAMESPACES", "notifications"),
        ("GATEWAY_NAMESPACES", "dashboard,chat"),
        ("GATEWAY_NAMESPACES", ","),
        ("GATEWAY_ALLOWED_ORIGINS", "example.com"),
        ("GATEWAY_ALLOWED_ORIGINS", "https://example.com/app"),
        ("GATEWAY_MAX_MESSAGE_BYTES", "1023"),
        ("GATEWAY_RATE_LIMIT", "20"),
        ("GATEWAY_RATE_LIMIT", "x/40"),
        ("GATEWAY_RATE_LIMIT", "0/40"),
        ("GATEWAY_RATE_LIMIT", "20/0"),
        ("GATEWAY_RATE_LIMIT", "20/1.5"),
        ("GATEWAY_RATE_LIMIT", "inf/40"),
        ("GATEWAY_MAX_CONNECTIONS", "-5"),
        ("GATEWAY_MAX_CONNECTIONS_PER_USER", "0"),
        ("GATEWAY_SEND_QUEUE_BYTES", "100"),
        ("GATEWAY_HEARTBEAT_SECONDS", "0"),
        ("GATEWAY_HEARTBEAT_SECONDS", "nan"),
        ("GATEWAY_DRAIN_SECONDS", "-1"),
        ("GATEWAY_RECOVERY_WINDOW_SECONDS", "-0.1"),
        ("GATEWAY_LOG_LEVEL", "trace"),
        ("GATEWAY_LOG_FORMAT", "xml"),
        ("GATEWAY_AMQP_PREFETCH", "0"),
        ("GATEWAY_BINDING_GRACE_SECONDS", "soon"),
        ("GATEWAY_DEMO", "maybe"),
        ("GATEWAY_JWT_PUBLIC_KEY", "/nonexistent/key.pem"),
        ("GATEWAY_JWKS_FILE", "/nonexistent/jwks.json"),
    ],
)
def test_invalid_value_names_its_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({**SECRET, variable: raw})
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ")


def test_invalid_flag_names_its_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load(SECRET, {"GATEWAY_PORT": "abc"})
    assert str(info.value) == "GATEWAY_PORT: must be an integer from 0 to 65535, got 'abc'"


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@host",
        "amqp://user:pw@host:99999/",
        "amqp://user:pw@host:port/",
        "amqp:///vhost-without-host",
        "not a url at all pw",
    ],
)
def test_a_malformed_amqp_url_stops_the_start_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({**SECRET, "GATEWAY_AMQP_URL": url})
    assert info.value.variable == "GATEWAY_AMQP_URL"
    assert "pw" not in str(info.value)


def test_no_key_and_private_namespaces_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load({"GATEWAY_PUBLIC_NAMESPACES": "dashboard"})
    assert info.value.variable == "GATEWAY_JWT_SECRET"
    assert info.value.problem == (
        "no JWT key is configured (set GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY or "
        "GATEWAY_JWKS_FILE) and namespace(s) notifications are not public"
    )


def test_no_key_at_all_is_refused() -> None:
    with pytest.raises(ConfigError, match="dashboard, notifications are not public"):
        load({})


def test_no_key_with_only_public_namespaces_is_accepted() -> None:
    c = load({"GATEWAY_NAMESPACES": "dashboard", "GATEWAY_PUBLIC_NAMESPACES": "dashboard"})
    assert not c.jwt_configured
    assert c.namespaces == c.public_namespaces == {Namespace.DASHBOARD}


def test_notifications_cannot_be_public() -> None:
    with pytest.raises(ConfigError) as info:
        load({**SECRET, "GATEWAY_PUBLIC_NAMESPACES": "dashboard,notifications"})
    assert info.value.variable == "GATEWAY_PUBLIC_NAMESPACES"
    assert info.value.problem == "notifications requires a token and cannot be public"


def test_validate_checks_a_replaced_config() -> None:
    good = Config(jwt_secret="s")
    validate(good)
    with pytest.raises(ConfigError, match="GATEWAY_JWT_SECRET"):
        validate(dataclasses.replace(good, jwt_secret=""))
    with pytest.raises(ConfigError, match="GATEWAY_INSTANCE_ID"):
        validate(dataclasses.replace(good, instance_id="a b"))


def test_pem_inline() -> None:
    c = load({"GATEWAY_JWT_PUBLIC_KEY": PEM})
    assert c.jwt_public_key.startswith("-----BEGIN PUBLIC KEY-----")
    assert c.jwt_configured


def test_pem_from_file(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text(PEM, encoding="utf-8")
    assert load({"GATEWAY_JWT_PUBLIC_KEY": str(key)}).jwt_public_key == PEM


def test_pem_file_without_a_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not a key", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"GATEWAY_JWT_PUBLIC_KEY: file .* holds no PEM key"):
        load({"GATEWAY_JWT_PUBLIC_KEY": str(key)})


def test_jwks_file(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": []}), encoding="utf-8")
    c = load({"GATEWAY_JWKS_FILE": str(jwks)})
    assert c.jwks_file == str(jwks)
    assert c.jwt_configured


def test_jwks_file_missing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_JWKS_FILE: cannot read JWKS file"):
        load({"GATEWAY_JWKS_FILE": str(tmp_path / "missing.json")})


@pytest.mark.parametrize("content", ["{not json", "[]", '{"keys": {}}', '{"keys": []}'])
def test_jwks_file_without_keys_list_is_refused(tmp_path: Path, content: str) -> None:
    # The file is parsed once, by the authenticator the app (and the supervisor) builds first.
    jwks = tmp_path / "jwks.json"
    jwks.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        build_authenticator(load({"GATEWAY_JWKS_FILE": str(jwks)}))
    assert info.value.variable == "GATEWAY_JWKS_FILE"


def test_secrets_stay_out_of_repr() -> None:
    c = load({**SECRET, "GATEWAY_API_KEYS": "key-123", "GATEWAY_AMQP_URL": "amqp://u:pw@h/"})
    text = repr(c)
    assert "s3cret" not in text
    assert "key-123" not in text
    assert "pw@" not in text


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_NOPE"):
        load(SECRET, {"GATEWAY_NOPE": "1"})


def test_unknown_variables_are_reported() -> None:
    env = {**SECRET, "GATEWAY_PROT": "1", "PATH": "/bin"}
    assert config.unknown_variables(env) == ["GATEWAY_PROT"]


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("GATEWAY_PROT", "GATEWAY_PORT"),
        ("GATEWAY_JWT_SECRETT", "GATEWAY_JWT_SECRET"),
        ("GATEWAY_API_KEY", "GATEWAY_API_KEYS"),
        ("GATEWAY_SOMETHING_ELSE_ENTIRELY", None),
    ],
)
def test_the_closest_option_is_named(name: str, closest: str | None) -> None:
    assert config.closest_option(name) == closest


def test_reference_markdown_lists_every_option() -> None:
    lines = config.reference_markdown().splitlines()
    assert lines[0] == "| variable | flag | default | meaning |"
    assert len(lines) == 2 + len(OPTIONS)
    assert (
        "| `GATEWAY_MAX_MESSAGE_BYTES` | `--max-message-bytes` | `65536` | "
        "max inbound frame size in bytes |" in lines
    )


def test_demo_mode_next_to_a_broker_needs_an_explicit_setting() -> None:
    env = {**SECRET, "GATEWAY_DEMO": "1", "GATEWAY_AMQP_URL": "amqp://u:pw@h/"}
    with pytest.raises(ConfigError) as info:
        load(env)
    assert info.value.variable == "GATEWAY_DEMO"
    assert "GATEWAY_DEMO_WITH_BROKER" in info.value.problem
    config = load({**env, "GATEWAY_DEMO_WITH_BROKER": "1"})
    assert (config.demo, config.demo_with_broker) == (True, True)
    assert load({**SECRET, "GATEWAY_DEMO": "1"}).demo  # the embedded backbone needs nothing
