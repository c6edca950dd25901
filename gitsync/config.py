"""Service configuration: parsed once, from a mapping, into a frozen object.

Only infrastructure settings live here. Secrets (the Windmill token, the Git
token) arrive with each request and are never read from the environment.
"""

from __future__ import annotations

import enum
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gitsync.errors import ConfigError
from gitsync.retry import RetryPolicy
from gitsync.secrets import Secret

# The repository root when running from a checkout (``make run``); the image
# sets WMILL_CLI explicitly.
_CHECKOUT_ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_WMILL_CLI = _CHECKOUT_ROOT / "node_modules" / "windmill-cli" / "esm" / "main.js"


# Threads beyond the syncs: /health, /ready, /jobs answer while every sync slot is taken.
SPARE_HTTP_THREADS = 8


class SecretScanPolicy(enum.StrEnum):
    """What a secret found in the files a sync adds does to it (see sync/scan.py)."""

    OFF = "off"  # no scan
    WARN = "warn"  # push, and report the findings
    HOLD = "hold"  # push everything but the items with a finding, and report them
    BLOCK = "block"  # refuse the sync; nothing is pushed


@dataclass(frozen=True)
class Settings:
    windmill_base_url: str = "http://windmill_server:8000/"
    host: str = "0.0.0.0"  # noqa: S104 - a container service listens on all interfaces
    port: int = 8080
    data_dir: Path = Path("/data")
    git_ssl_cainfo: Path | None = None
    node_extra_ca_certs: Path | None = None
    wmill_cli: Path = _DEFAULT_WMILL_CLI
    node_bin: str = "node"
    # Seconds. A whole sync, and any single wmill invocation within it.
    sync_timeout: float = 900.0
    command_timeout: float = 600.0
    max_concurrent_syncs: int = 4
    log_level: str = "INFO"
    log_format: str = "auto"  # auto | json | text
    # waitress threads: requests served at once, a sync waited for included.
    # None: enough for every running and queued sync plus spare ones (/health).
    http_threads: int | None = None
    # Seconds a SIGTERM or SIGINT gives accepted syncs to finish: a little under
    # docker-compose.yml's stop_grace_period (16 min), above SYNC_TIMEOUT.
    shutdown_grace: float = 930.0
    # Seconds an idle or stalled connection is kept open (checked every 10 s).
    idle_connection_timeout: float = 60.0
    max_body_bytes: int = 64 * 1024
    # Syncs waiting for a slot; beyond this, 503 with Retry-After.
    max_queued_syncs: int = 32
    # A pull deleting more than this share of the backed-up files is refused.
    mass_deletion_share: float = 0.5
    # Transient failures (dropped connections, 5xx): tries and total seconds.
    retry_attempts: int = 4
    retry_max_seconds: float = 120.0
    retry_wait_initial: float = 1.0
    # Jobs kept in the history (SQLite in DATA_DIR).
    job_history: int = 1000
    # Refuse to start a sync with less free space than this in DATA_DIR.
    min_free_bytes: int = 100 * 1024 * 1024
    # Largest single file the wmill child may write (0: no limit).
    max_file_bytes: int = 0
    # Most bytes one Git fetch may receive from the remote; beyond it the
    # fetch stops and nothing is stored (a hostile or runaway remote).
    max_fetch_bytes: int = 2 * 1024 * 1024 * 1024
    # Seconds between full pulls of a target; the syncs between pull only the
    # items that changed (sync/narrowed.py). 0: every pull is a full one.
    full_pull_interval: float = 86400.0
    # Where failure and staleness alerts are POSTed (a secret: Slack's URLs are).
    alert_webhook_url: Secret | None = None
    # A target with no successful sync for this long is reported (seconds).
    stale_after: float = 26 * 3600
    alert_check_interval: float = 60.0
    # Bearer token every request but /health must carry (None: endpoint open).
    sync_auth_token: Secret | None = None
    # Hosts git_remote_url may name (empty: any host).
    git_allowed_hosts: frozenset[str] = frozenset()
    # Secrets in the files a sync adds or changes: refused by default.
    secret_scan: SecretScanPolicy = SecretScanPolicy.HOLD
    # The entropy detectors too (noisy on ordinary scripts).
    secret_scan_entropy: bool = False
    # May a request's "secret_scan" be looser than SECRET_SCAN? (Stricter always may.)
    secret_scan_request_may_loosen: bool = False

    @property
    def server_threads(self) -> int:
        if self.http_threads is not None:
            return self.http_threads
        return self.max_concurrent_syncs + self.max_queued_syncs + SPARE_HTTP_THREADS

    @property
    def repos_dir(self) -> Path:
        return self.data_dir / "targets"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.retry_attempts,
            max_seconds=self.retry_max_seconds,
            wait_initial=self.retry_wait_initial,
            wait_max=max(self.retry_wait_initial, 30.0),
        )

    @property
    def windmill_host(self) -> str:
        return urllib.parse.urlsplit(self.windmill_base_url).netloc

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``env`` (usually ``os.environ``), reporting every problem at once."""
        problems: list[str] = []
        values: dict[str, object] = {}

        def text(key: str, attr: str) -> None:
            raw = env.get(key, "").strip()
            if raw:
                values[attr] = raw

        def number(
            key: str, attr: str, kind: type[int] | type[float], low: float, high: float = 1e9
        ) -> None:
            raw = env.get(key, "").strip()
            if not raw:
                return
            try:
                value = kind(raw)
            except ValueError:
                problems.append(f"{key} must be a number, got {raw!r}")
                return
            if not low <= value <= high:
                problems.append(f"{key} must be between {low:g} and {high:g}, got {raw}")
                return
            values[attr] = value

        def path(key: str, attr: str, *, must_exist: bool) -> None:
            raw = env.get(key, "").strip()
            if not raw:
                return
            p = Path(raw)
            if must_exist and not p.is_file():
                problems.append(f"{key} names {raw!r}, which is not a readable file")
                return
            values[attr] = p

        base = env.get("WINDMILL_BASE_URL", "").strip()
        if base:
            parts = urllib.parse.urlsplit(base)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                problems.append(f"WINDMILL_BASE_URL must be an http(s) URL, got {base!r}")
            elif parts.username or parts.password or parts.query or parts.fragment:
                problems.append(
                    "WINDMILL_BASE_URL must not contain credentials, a query or a fragment"
                )
            else:
                values["windmill_base_url"] = base.rstrip("/") + "/"

        text("HOST", "host")
        number("PORT", "port", int, 0, 65535)
        path("DATA_DIR", "data_dir", must_exist=False)
        path("GIT_SSL_CAINFO", "git_ssl_cainfo", must_exist=True)
        path("NODE_EXTRA_CA_CERTS", "node_extra_ca_certs", must_exist=True)
        path("WMILL_CLI", "wmill_cli", must_exist=False)
        text("NODE_BIN", "node_bin")
        number("SYNC_TIMEOUT", "sync_timeout", float, 1)
        number("COMMAND_TIMEOUT", "command_timeout", float, 1)
        number("MAX_CONCURRENT_SYNCS", "max_concurrent_syncs", int, 1)
        number("HTTP_THREADS", "http_threads", int, 1, 1000)
        number("SHUTDOWN_GRACE_SECONDS", "shutdown_grace", float, 0)
        number("IDLE_CONNECTION_TIMEOUT", "idle_connection_timeout", float, 1, 86400)
        number("MAX_BODY_BYTES", "max_body_bytes", int, 1024, 16 * 1024 * 1024)
        number("MAX_QUEUED_SYNCS", "max_queued_syncs", int, 0)
        number("MASS_DELETION_SHARE", "mass_deletion_share", float, 0, 1)
        number("RETRY_ATTEMPTS", "retry_attempts", int, 1, 100)
        number("RETRY_MAX_SECONDS", "retry_max_seconds", float, 0)
        number("RETRY_WAIT_INITIAL", "retry_wait_initial", float, 0)
        number("JOB_HISTORY", "job_history", int, 1)
        number("MIN_FREE_BYTES", "min_free_bytes", int, 0, 1e18)
        number("MAX_FILE_BYTES", "max_file_bytes", int, 0, 1e18)
        number("MAX_FETCH_BYTES", "max_fetch_bytes", int, 1024, 1e18)
        number("FULL_PULL_INTERVAL_SECONDS", "full_pull_interval", float, 0)

        token_file = env.get("SYNC_AUTH_TOKEN_FILE", "").strip()
        if token_file:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as exc:
                problems.append(f"SYNC_AUTH_TOKEN_FILE cannot be read ({exc.strerror})")
            else:
                if len(token) < 16 or any(c.isspace() for c in token):
                    problems.append(
                        "SYNC_AUTH_TOKEN_FILE must hold one token of at least 16 characters"
                    )
                else:
                    values["sync_auth_token"] = Secret(token)

        number("STALE_AFTER_SECONDS", "stale_after", float, 1)
        number("ALERT_CHECK_INTERVAL", "alert_check_interval", float, 0.1)
        alert_url = env.get("ALERT_WEBHOOK_URL", "").strip()
        alert_file = env.get("ALERT_WEBHOOK_URL_FILE", "").strip()
        if alert_file:
            try:
                alert_url = Path(alert_file).read_text().strip()
            except OSError as exc:
                problems.append(f"ALERT_WEBHOOK_URL_FILE cannot be read ({exc.strerror})")
        if alert_url:
            if urllib.parse.urlsplit(alert_url).scheme not in ("http", "https"):
                problems.append("ALERT_WEBHOOK_URL must be an http(s) URL")
            else:
                values["alert_webhook_url"] = Secret(alert_url)

        def flag(key: str, attr: str) -> None:
            raw = env.get(key, "").strip().lower()
            if not raw:
                return
            if raw not in ("true", "false", "1", "0", "yes", "no"):
                problems.append(f"{key} must be true or false, got {raw!r}")
                return
            values[attr] = raw in ("true", "1", "yes")

        policy = env.get("SECRET_SCAN", "").strip().lower()
        if policy:
            if policy not in tuple(SecretScanPolicy):
                problems.append(f"SECRET_SCAN must be hold, block, warn or off, got {policy!r}")
            else:
                values["secret_scan"] = SecretScanPolicy(policy)
        flag("SECRET_SCAN_ENTROPY", "secret_scan_entropy")
        flag("SECRET_SCAN_REQUEST_MAY_LOOSEN", "secret_scan_request_may_loosen")

        hosts = env.get("GIT_ALLOWED_HOSTS", "").strip()
        if hosts:
            values["git_allowed_hosts"] = frozenset(
                h.strip().lower() for h in hosts.split(",") if h.strip()
            )

        level = env.get("LOG_LEVEL", "").strip().upper()
        if level:
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                problems.append(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
            else:
                values["log_level"] = level
        fmt = env.get("LOG_FORMAT", "").strip().lower()
        if fmt:
            if fmt not in ("auto", "json", "text"):
                problems.append(f"LOG_FORMAT must be auto, json or text, got {fmt!r}")
            else:
                values["log_format"] = fmt

        if problems:
            raise ConfigError(problems)
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.command_timeout > settings.sync_timeout:
            settings = cls(**{**values, "command_timeout": settings.sync_timeout})  # type: ignore[arg-type]
        return settings
