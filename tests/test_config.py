from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gitsync.config import Settings
from gitsync.errors import ConfigError


def test_defaults_follow_the_contract() -> None:
    settings = Settings.from_mapping({})
    assert settings.windmill_base_url == "http://windmill_server:8000/"
    assert settings.port == 8080
    assert settings.git_ssl_cainfo is None


def test_values_are_read_from_the_mapping(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = Settings.from_mapping(
        {
            "WINDMILL_BASE_URL": "https://windmill.internal:8443",
            "PORT": "9000",
            "DATA_DIR": str(tmp_path / "data"),
            "GIT_SSL_CAINFO": str(ca),
            "SYNC_TIMEOUT": "120",
            "COMMAND_TIMEOUT": "600",
        }
    )
    assert settings.windmill_base_url == "https://windmill.internal:8443/"
    assert settings.windmill_host == "windmill.internal:8443"
    assert settings.port == 9000
    assert settings.data_dir == tmp_path / "data"
    assert settings.git_ssl_cainfo == ca
    # One command can never outlive the whole sync.
    assert settings.command_timeout == 120


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping(
            {
                "WINDMILL_BASE_URL": "ftp://x",
                "PORT": "eighty",
                "GIT_SSL_CAINFO": str(tmp_path / "missing.pem"),
                "MAX_CONCURRENT_SYNCS": "0",
                "LOG_LEVEL": "chatty",
            }
        )
    problems = info.value.problems
    assert len(problems) == 5
    assert any("WINDMILL_BASE_URL" in p for p in problems)
    assert any("PORT must be a number" in p for p in problems)
    assert any("GIT_SSL_CAINFO" in p for p in problems)
    assert any("MAX_CONCURRENT_SYNCS" in p for p in problems)
    assert any("LOG_LEVEL" in p for p in problems)


def test_credentials_in_the_windmill_url_are_refused() -> None:
    with pytest.raises(ConfigError, match="must not contain credentials"):
        Settings.from_mapping({"WINDMILL_BASE_URL": "http://admin:pw@windmill:8000"})


def test_server_threads_cover_every_sync_slot_and_queue_place_plus_spares() -> None:
    defaults = Settings.from_mapping({})
    assert defaults.server_threads == 4 + 32 + 8
    sized = Settings.from_mapping({"MAX_CONCURRENT_SYNCS": "2", "MAX_QUEUED_SYNCS": "3"})
    assert sized.server_threads == 2 + 3 + 8
    assert Settings.from_mapping({"HTTP_THREADS": "12"}).server_threads == 12


def test_drain_and_connection_settings() -> None:
    defaults = Settings.from_mapping({})
    # Over a whole sync, under the compose file's 16 min stop_grace_period.
    assert defaults.sync_timeout < defaults.shutdown_grace < 16 * 60
    assert defaults.idle_connection_timeout == 60
    settings = Settings.from_mapping(
        {"SHUTDOWN_GRACE_SECONDS": "5", "IDLE_CONNECTION_TIMEOUT": "2.5"}
    )
    assert (settings.shutdown_grace, settings.idle_connection_timeout) == (5, 2.5)
    with pytest.raises(ConfigError) as error:
        Settings.from_mapping(
            {"SHUTDOWN_GRACE_SECONDS": "-1", "IDLE_CONNECTION_TIMEOUT": "0", "HTTP_THREADS": "x"}
        )
    assert len(error.value.problems) == 3


def test_windmill_version_skew_warning_threshold() -> None:
    assert Settings.from_mapping({}).windmill_version_skew_warn_minor == 20
    settings = Settings.from_mapping({"WINDMILL_VERSION_SKEW_WARN_MINOR": "5"})
    assert settings.windmill_version_skew_warn_minor == 5
    with pytest.raises(ConfigError) as error:
        Settings.from_mapping({"WINDMILL_VERSION_SKEW_WARN_MINOR": "-1"})
    assert error.value.problems == [
        "WINDMILL_VERSION_SKEW_WARN_MINOR must be between 0 and 10000, got -1"
    ]
    with pytest.raises(ConfigError, match="WINDMILL_VERSION_SKEW_WARN_MINOR must be a number"):
        Settings.from_mapping({"WINDMILL_VERSION_SKEW_WARN_MINOR": "many"})


def test_a_secret_may_come_from_a_file_which_wins(tmp_path: Path) -> None:
    url_file = tmp_path / "alert-url"
    url_file.write_text("https://hooks.example.com/from-file\n")
    settings = Settings.from_mapping(
        {
            "ALERT_WEBHOOK_URL": "https://hooks.example.com/from-env",
            "ALERT_WEBHOOK_URL_FILE": str(url_file),
        }
    )
    assert settings.alert_webhook_url is not None
    assert settings.alert_webhook_url.reveal() == "https://hooks.example.com/from-file"
    short_token = tmp_path / "token"
    short_token.write_text("too-short\n")
    with pytest.raises(ConfigError) as error:
        Settings.from_mapping(
            {
                "ALERT_WEBHOOK_URL_FILE": str(tmp_path / "missing"),
                "SYNC_AUTH_TOKEN_FILE": str(short_token),
                "SECRET_SCAN": "Loud",
                "SECRET_SCAN_ENTROPY": "maybe",
            }
        )
    assert error.value.problems == [
        "ALERT_WEBHOOK_URL_FILE cannot be read (No such file or directory)",
        "SYNC_AUTH_TOKEN_FILE must hold one token of at least 16 characters",
        "SECRET_SCAN must be hold, block, warn or off, got 'loud'",
        "SECRET_SCAN_ENTROPY must be true or false, got 'maybe'",
    ]


def test_every_variable_is_documented() -> None:
    reference = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    variables = [f.metadata["setting"].env for f in dataclasses.fields(Settings)]
    assert len(variables) == len(dataclasses.fields(Settings)) > 30
    assert [v for v in variables if f"`{v}`" not in reference] == []
