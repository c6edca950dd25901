"""Service configuration: parsed once, from a mapping, into a frozen object.

Only infrastructure settings live here. Secrets (the Windmill token, the Git
token) arrive with each request and are never read from the environment.

Each setting is declared once, as a field of ``Settings`` whose default is a
``setting(ENV_NAME, parser, default, help)``: the parser turns the variable's
text into the field's value or raises ``Invalid`` with what is wrong, and
``Settings.from_mapping`` runs every parser in one loop (the model is
waitress's ``Adjustments``). Adding a setting is adding one such field.
"""

from __future__ import annotations

import dataclasses
import enum
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gitsync.errors import ConfigError
from gitsync.retry import RetryPolicy
from gitsync.secrets import Secret

T = TypeVar("T")

# The repository root when running from a checkout (``make run``); the image
# sets WMILL_CLI explicitly.
_CHECKOUT_ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_WMILL_CLI = _CHECKOUT_ROOT / "node_modules" / "windmill-cli" / "esm" / "main.js"


# Threads beyond the syncs: /health, /ready, /jobs answer while every sync slot is taken.
SPARE_HTTP_THREADS = 8


class SecretScanPolicy(enum.StrEnum):
    """What a secret found in the files a sync adds does to it (see secretscan/scan.py)."""

    OFF = "off"  # no scan
    WARN = "warn"  # push, and report the findings
    HOLD = "hold"  # push everything but the items with a finding, and report them
    BLOCK = "block"  # refuse the sync; nothing is pushed


# -- parsers: the text of one variable (stripped, never empty) to a value --------------------


class Invalid(Exception):
    """What is wrong with a variable's value; the message follows the variable's name."""


Parser = Callable[[str], T]


def text(raw: str) -> str:
    return raw


def _number(kind: type[int] | type[float], low: float, high: float = 1e9) -> Parser[Any]:
    def parse(raw: str) -> int | float:
        try:
            value = kind(raw)
        except ValueError:
            raise Invalid(f"must be a number, got {raw!r}") from None
        if not low <= value <= high:
            raise Invalid(f"must be between {low:g} and {high:g}, got {raw}")
        return value

    return parse


def integer(low: float, high: float = 1e9) -> Parser[int]:
    return _number(int, low, high)


def number(low: float, high: float = 1e9) -> Parser[float]:
    return _number(float, low, high)


def path(raw: str) -> Path:
    return Path(raw)


def existing_file(raw: str) -> Path:
    if not Path(raw).is_file():
        raise Invalid(f"names {raw!r}, which is not a readable file")
    return Path(raw)


def flag(raw: str) -> bool:
    raw = raw.lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise Invalid(f"must be true or false, got {raw!r}")
    return raw in ("true", "1", "yes")


def one_of(*options: str) -> Parser[str]:
    """One of ``options``, in their case whatever the text's; the message lists them in order."""
    listed = ", ".join(options[:-1]) + " or " + options[-1]
    upper = all(option.isupper() for option in options)

    def parse(raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise Invalid(f"must be {listed}, got {value!r}")
        return value

    return parse


def scan_policy(raw: str) -> SecretScanPolicy:
    return SecretScanPolicy(one_of("hold", "block", "warn", "off")(raw))


def host_list(raw: str) -> frozenset[str]:
    return frozenset(h.strip().lower() for h in raw.split(",") if h.strip())


def windmill_url(raw: str) -> str:
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Invalid(f"must be an http(s) URL, got {raw!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise Invalid("must not contain credentials, a query or a fragment")
    return raw.rstrip("/") + "/"


def webhook_url(raw: str) -> Secret:
    if urllib.parse.urlsplit(raw).scheme not in ("http", "https"):
        raise Invalid("must be an http(s) URL")
    return Secret(raw)


def _read(name: str) -> str:
    try:
        return Path(name).read_text().strip()
    except OSError as exc:
        raise Invalid(f"cannot be read ({exc.strerror})") from None


def token_file(raw: str) -> Secret:
    token = _read(raw)
    if len(token) < 16 or any(c.isspace() for c in token):
        raise Invalid("must hold one token of at least 16 characters")
    return Secret(token)


@dataclass(frozen=True)
class _Entry:
    env: str
    parse: Parser[object]
    # NAME_FILE may name a file holding the value instead (a Docker secret); it wins.
    or_file: bool = False


def setting(env: str, parse: Parser[T], default: T, *, or_file: bool = False) -> T:
    """A field of ``Settings`` read from the variable ``env`` (``default`` when unset or empty)."""
    entry = _Entry(env, parse, or_file)
    return dataclasses.field(default=default, metadata={"setting": entry})


_DEFAULT_WINDMILL = "http://windmill_server:8000/"


@dataclass(frozen=True)
class Settings:
    """Every setting: its field, its variable, how the text is read, and its default.

    Each comment is the setting's one-line help; docs/configuration.md is the
    user's reference (a test checks it names every variable).
    """

    # How the service reaches Windmill.
    windmill_base_url: str = setting("WINDMILL_BASE_URL", windmill_url, _DEFAULT_WINDMILL)
    # Listen address: a container service listens on all interfaces.
    host: str = setting("HOST", text, "0.0.0.0")  # noqa: S104
    # Listen port (0: a free one).
    port: int = setting("PORT", integer(0, 65535), 8080)
    # Working copies and state.
    data_dir: Path = setting("DATA_DIR", path, Path("/data"))
    # CA bundle for a Git server with a private CA.
    git_ssl_cainfo: Path | None = setting("GIT_SSL_CAINFO", existing_file, None)
    # CA bundle for a Windmill served over HTTPS with a private CA.
    node_extra_ca_certs: Path | None = setting("NODE_EXTRA_CA_CERTS", existing_file, None)
    # windmill-cli's esm/main.js.
    wmill_cli: Path = setting("WMILL_CLI", path, _DEFAULT_WMILL_CLI)
    # The node that runs it.
    node_bin: str = setting("NODE_BIN", text, "node")
    # Seconds a whole sync may take, and any single wmill invocation within it.
    sync_timeout: float = setting("SYNC_TIMEOUT", number(1), 900.0)
    command_timeout: float = setting("COMMAND_TIMEOUT", number(1), 600.0)
    # Syncs of different targets running at once.
    max_concurrent_syncs: int = setting("MAX_CONCURRENT_SYNCS", integer(1), 4)
    log_level: str = setting("LOG_LEVEL", one_of("DEBUG", "INFO", "WARNING", "ERROR"), "INFO")
    # JSON, text, or auto: JSON unless stdout is a terminal.
    log_format: str = setting("LOG_FORMAT", one_of("auto", "json", "text"), "auto")
    # waitress threads: requests served at once, a sync waited for included.
    # None: enough for every running and queued sync plus spare ones (/health).
    http_threads: int | None = setting("HTTP_THREADS", integer(1, 1000), None)
    # Seconds a SIGTERM or SIGINT gives accepted syncs to finish: a little under
    # docker-compose.yml's stop_grace_period (16 min), above SYNC_TIMEOUT.
    shutdown_grace: float = setting("SHUTDOWN_GRACE_SECONDS", number(0), 930.0)
    # Seconds an idle or stalled connection is kept open (checked every 10 s).
    idle_connection_timeout: float = setting("IDLE_CONNECTION_TIMEOUT", number(1, 86400), 60.0)
    # Largest request body.
    max_body_bytes: int = setting("MAX_BODY_BYTES", integer(1024, 16 * 1024 * 1024), 64 * 1024)
    # Syncs waiting for a slot; beyond this, 503 with Retry-After.
    max_queued_syncs: int = setting("MAX_QUEUED_SYNCS", integer(0), 32)
    # A pull deleting more than this share of the backed-up files is refused.
    mass_deletion_share: float = setting("MASS_DELETION_SHARE", number(0, 1), 0.5)
    # Transient failures (dropped connections, 5xx): tries, total seconds, first wait.
    retry_attempts: int = setting("RETRY_ATTEMPTS", integer(1, 100), 4)
    retry_max_seconds: float = setting("RETRY_MAX_SECONDS", number(0), 120.0)
    retry_wait_initial: float = setting("RETRY_WAIT_INITIAL", number(0), 1.0)
    # Jobs kept in the history (SQLite in DATA_DIR).
    job_history: int = setting("JOB_HISTORY", integer(1), 1000)
    # Refuse to start a sync with less free space than this in DATA_DIR.
    min_free_bytes: int = setting("MIN_FREE_BYTES", integer(0, 1e18), 100 * 1024 * 1024)
    # Largest single file the wmill child may write (0: no limit).
    max_file_bytes: int = setting("MAX_FILE_BYTES", integer(0, 1e18), 0)
    # Most bytes one Git fetch may receive from the remote; beyond it the
    # fetch stops and nothing is stored (a hostile or runaway remote).
    max_fetch_bytes: int = setting("MAX_FETCH_BYTES", integer(1024, 1e18), 2 * 1024**3)
    # Seconds between full pulls of a target; the syncs between pull only the
    # items that changed (backup/narrowed.py). 0: every pull is a full one.
    full_pull_interval: float = setting("FULL_PULL_INTERVAL_SECONDS", number(0), 86400.0)
    # Where failure and staleness alerts are POSTed (a secret: Slack's URLs are).
    alert_webhook_url: Secret | None = setting("ALERT_WEBHOOK_URL", webhook_url, None, or_file=True)
    # A target with no successful sync for this long is reported (seconds).
    stale_after: float = setting("STALE_AFTER_SECONDS", number(1), 26 * 3600.0)
    alert_check_interval: float = setting("ALERT_CHECK_INTERVAL", number(0.1), 60.0)
    # Bearer token every request but /health must carry (None: endpoint open).
    sync_auth_token: Secret | None = setting("SYNC_AUTH_TOKEN_FILE", token_file, None)
    # Hosts git_remote_url may name (empty: any host).
    git_allowed_hosts: frozenset[str] = setting("GIT_ALLOWED_HOSTS", host_list, frozenset())
    # Secrets in the files a sync adds or changes: held back by default.
    secret_scan: SecretScanPolicy = setting("SECRET_SCAN", scan_policy, SecretScanPolicy.HOLD)
    # The entropy detectors too (noisy on ordinary scripts).
    secret_scan_entropy: bool = setting("SECRET_SCAN_ENTROPY", flag, False)
    # May a request's "secret_scan" be looser than SECRET_SCAN? (Stricter always may.)
    secret_scan_request_may_loosen: bool = setting("SECRET_SCAN_REQUEST_MAY_LOOSEN", flag, False)
    # Warn when Windmill is more than this many minor releases ahead of the pinned CLI.
    windmill_version_skew_warn_minor: int = setting(
        "WINDMILL_VERSION_SKEW_WARN_MINOR", integer(0, 10000), 20
    )

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
    def node_compile_cache(self) -> Path:
        return self.data_dir / "node-compile-cache"

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
        for field in dataclasses.fields(cls):
            entry: _Entry = field.metadata["setting"]
            raw = env.get(entry.env, "").strip()
            if entry.or_file and (file := env.get(f"{entry.env}_FILE", "").strip()):
                try:
                    raw = _read(file)
                except Invalid as exc:
                    problems.append(f"{entry.env}_FILE {exc}")
            if not raw:
                continue  # unset or empty: the default
            try:
                values[field.name] = entry.parse(raw)
            except Invalid as exc:
                problems.append(f"{entry.env} {exc}")
        if problems:
            raise ConfigError(problems)
        settings = cls(**values)  # type: ignore[arg-type]

        # Across settings: one command can never outlive the whole sync.
        if settings.command_timeout > settings.sync_timeout:
            settings = dataclasses.replace(settings, command_timeout=settings.sync_timeout)
        return settings
