"""The configuration loader: good and bad files, environment overrides, CLI exit status."""

import subprocess
import sys
import tomllib

import pytest

from shopcast.server._config import ConfigError, default_config_text, load_config, render_config


def test_defaults_load_and_cover_every_key():
    config = load_config(environ={})
    assert config.server.port == 8443
    assert config.tls.self_signed_validity_days <= 14
    # Every key in default.toml has a comment line above it or at its section
    # start: the file is the documentation of every tunable.
    text = default_config_text()
    for section, table in tomllib.loads(text).items():
        for key in table:
            assert f"\n{key} = " in text, f"{section}.{key} is not in default.toml"


def test_render_round_trips():
    config = load_config(environ={})
    rendered = tomllib.loads(render_config(config))
    assert rendered["quic"]["idle_timeout_s"] == config.quic.idle_timeout_s
    assert rendered["http"]["latency_buckets_s"] == list(config.http.latency_buckets_s)


def test_file_overrides_defaults(tmp_path):
    path = tmp_path / "shop.toml"
    path.write_text('[server]\nport = 9443\npublic_names = ["shop.example"]\n[log]\nformat = "json"\n')
    config = load_config(path, environ={})
    assert config.server.port == 9443
    assert config.server.public_names == ("shop.example",)
    assert config.log.format == "json"
    assert config.quic.max_connections == 10000  # untouched default


def test_environment_overrides_file_and_flags_override_environment(tmp_path):
    path = tmp_path / "shop.toml"
    path.write_text("[server]\nport = 9443\n")
    env = {"SHOPCAST_SERVER__PORT": "9500", "SHOPCAST_HTTP__CORS_ORIGINS": '["https://a.example"]',
           "SHOPCAST_SERVER__HOST": "localhost"}
    config = load_config(path, environ=env)
    assert config.server.port == 9500
    assert config.server.host == "localhost"  # a bare word is a string
    assert config.http.cors_origins == ("https://a.example",)
    config = load_config(path, environ=env, overrides={"server": {"port": 9600}})
    assert config.server.port == 9600


@pytest.mark.parametrize("text, key, fragment", [
    ("[server]\nprot = 1\n", "server.prot", "unknown key"),
    ("[sever]\nport = 1\n", "sever", "unknown section"),
    ('[server]\nport = "80"\n', "server.port", "expected an integer from 0 to 65535"),
    ("[server]\nport = 70000\n", "server.port", "from 0 to 65535"),
    ("[tls]\nself_signed_validity_days = 30\n", "tls.self_signed_validity_days", "from 1 to 14 days"),
    ('[log]\nlevel = "loud"\n', "log.level", "one of 'debug', 'info', 'warning', 'error'"),
    ("[quic]\nidle_timeout_s = true\n", "quic.idle_timeout_s", "expected a number"),
    ('[http]\ncors_origins = "x"\n', "http.cors_origins", "expected a list"),
    ("[http]\nlatency_buckets_s = [0.1, \"a\"]\n", "http.latency_buckets_s[1]", "expected a number"),
    ("[media]\nfec_k = -1\n", "media.fec_k", "-1"),
    ("[tokens]\ndefault_ttl_s = 100\nmax_ttl_s = 10\n", "tokens.default_ttl_s", "must not exceed"),
    ('[tls]\ncert_file = "a.pem"\n', "tls.cert_file", "set together"),
    ("server = 3\n", "server", "expected a [server] table"),
    ("[server\n", "--config", "not valid TOML"),
])
def test_bad_files_name_the_key(tmp_path, text, key, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == key
    assert fragment in str(info.value)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError) as info:
        load_config(environ={"SHOPCAST_QUIC__MAX_CONNECTIONS": "lots"})
    assert info.value.key == "quic.max_connections"
    assert "SHOPCAST_QUIC__MAX_CONNECTIONS" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml", environ={})
    assert "cannot read" in str(info.value)


def test_cli_exits_2_naming_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[quic]\nmax_streams_bidi = 0\n")
    result = subprocess.run([sys.executable, "-m", "shopcast.server._cli", "config", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "quic.max_streams_bidi" in result.stderr
    assert "from 1 to 1000000" in result.stderr


def test_cli_config_prints_effective_values(tmp_path):
    result = subprocess.run([sys.executable, "-m", "shopcast.server._cli", "config", "--port", "9123",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    parsed = tomllib.loads(result.stdout)
    assert parsed["server"]["port"] == 9123
    assert parsed["server"]["data_dir"] == str(tmp_path)


def test_rules_across_keys_name_the_key():
    with pytest.raises(ConfigError) as info:
        load_config(environ={"SHOPCAST_MEDIA__RING_PACKETS": "1000"})
    assert info.value.key == "media.ring_packets"
    assert "power of two" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(environ={"SHOPCAST_RELAY__PATH": "moq"})
    assert info.value.key == "relay.path"
