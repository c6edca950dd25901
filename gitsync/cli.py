"""``windmill-git-sync``: run the service, or one sync, restore or history query.

Secrets are read from the environment (WINDMILL_TOKEN, GIT_TOKEN) or, with
``--secrets-from-stdin``, from a JSON object on standard input; never from
argv, which every local user can read in ``ps``. ``history`` needs no
secret; given GIT_TOKEN it first fetches the branch's older history.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from typing import Any

from gitsync.backup.job import success_message
from gitsync.backup.service import SyncService
from gitsync.config import Settings
from gitsync.errors import ConfigError, RequestError, WindmillGitSyncError
from gitsync.inputs.requests import (
    parse_history_query,
    parse_history_request,
    parse_restore_request,
    parse_sync_request,
)
from gitsync.ops import logs
from gitsync.recovery.history import item_history
from gitsync.recovery.restore import RestoreService
from gitsync.version import CLI_VERSION, service_version

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Backed up, except items held for secrets (restic's "some files could not be read").
EXIT_PARTIAL = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="windmill-git-sync", description=__doc__)
    # Before the subcommand is required and before Settings are read: the
    # version needs no configuration and touches no DATA_DIR.
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {service_version()} (windmill-cli {CLI_VERSION})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service (POST /sync, /restore, ...)")

    sync = commands.add_parser("sync", help="back up one workspace now and exit")
    _target_options(sync)
    sync.add_argument("--git-user-name")
    sync.add_argument("--git-user-email")
    sync.add_argument(
        "--allow-mass-deletion",
        action="store_true",
        default=None,
        help="accept a pull that deletes most of the backup",
    )

    restore = commands.add_parser("restore", help="restore a backup into a workspace")
    _target_options(restore)
    restore.add_argument("--git-ref", help="branch, tag or commit (default: --git-branch)")
    restore.add_argument(
        "--include",
        dest="includes",
        action="append",
        help="restore only items matching this pattern (repeatable)",
    )
    restore.add_argument(
        "--apply", action="store_true", default=None, help="apply the changes (default: dry run)"
    )
    restore.add_argument("--allow-deletions", action="store_true", default=None)
    restore.add_argument("--allow-mass-deletion", action="store_true", default=None)

    history = commands.add_parser(
        "history",
        help="backup commits that touched an item (with GIT_TOKEN: fetch the older ones first)",
    )
    _target_options(history)
    history.add_argument("--path", required=True, help="item path, e.g. f/team/my_flow")

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_mapping(os.environ)
    except ConfigError as exc:
        print(f"windmill-git-sync: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    # A one-shot command's stdout is its JSON answer: its log goes to stderr.
    logs.configure(
        settings.log_level,
        settings.log_format,
        sys.stdout if args.command == "serve" else sys.stderr,
    )
    # A core dump of a process holding tokens must never reach a disk.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    problem = _data_dir_problem(settings)
    if problem:
        print(f"windmill-git-sync: {problem}", file=sys.stderr)
        return EXIT_USAGE

    if args.command == "serve":
        from gitsync.web.server import serve

        return serve(settings)
    try:
        return _one_shot(settings, args)
    except WindmillGitSyncError as exc:
        print(
            json.dumps({"success": False, "error": exc.code, "message": exc.message, **exc.facts()})
        )
        return exit_code(exc)


def exit_code(exc: WindmillGitSyncError) -> int:
    """The command's own reading of an error: what was asked was wrong, or the work failed."""
    return EXIT_USAGE if isinstance(exc, (RequestError, ConfigError)) else EXIT_FAILED


def _data_dir_problem(settings: Settings) -> str | None:
    """Say plainly when DATA_DIR cannot be used (the usual Docker volume mistake)."""
    try:
        SyncService(settings).prepare_data_dir()
        with tempfile.NamedTemporaryFile(dir=settings.data_dir, prefix=".write-test-"):
            return None
    except OSError as exc:
        return (
            f"DATA_DIR {settings.data_dir} is not writable by uid {os.getuid()} "
            f"({exc.strerror}); give it to that user, e.g. chown {os.getuid()} <host dir>"
        )


def _target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace")
    parser.add_argument("--git-remote-url")
    parser.add_argument("--git-branch")
    parser.add_argument("--git-username")
    parser.add_argument("--path-prefix")
    parser.add_argument(
        "--secrets-from-stdin",
        action="store_true",
        help='read {"windmill_token": ..., "git_token": ...} from standard input',
    )


def _one_shot(settings: Settings, args: argparse.Namespace) -> int:
    body = _body_with_secrets(args)
    if args.command == "history":
        return _history(settings, body)
    if args.command == "sync":
        service = SyncService(settings)
        service.prepare_data_dir()
        result = service.sync(parse_sync_request(body).to_job())
        held = bool(result.all_held)
        output: dict[str, Any] = {
            "success": not held,
            "message": success_message(result),
            **({"error": "secrets_held", "partial": True} if held else {}),
            **result.to_dict(),
        }
        if held:
            print(json.dumps(output, indent=2))
            return EXIT_PARTIAL
    else:
        locks = SyncService(settings).locks
        restored = RestoreService(settings, locks).restore(parse_restore_request(body).to_job())
        output = {"success": True, **restored.to_dict()}
    print(json.dumps(output, indent=2))
    return EXIT_OK


def _history(settings: Settings, body: dict[str, Any]) -> int:
    """GET /history without a Git token; POST /history (older commits fetched) with one."""
    body.pop("windmill_token", None)  # not needed: Windmill is not asked
    if "git_token" in body:
        query = parse_history_request(body).to_query()
    else:
        query = parse_history_query({k: v for k, v in body.items() if k != "git_username"})
    found = item_history(settings, query, SyncService(settings).locks)
    output = {"success": True, "workspace": query.workspace, "path": query.item_path}
    print(json.dumps({**output, **found.to_dict()}, indent=2))
    return EXIT_OK


def _body_with_secrets(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.secrets_from_stdin:
        try:
            secrets = json.loads(sys.stdin.read() or "{}")
        except json.JSONDecodeError:
            secrets = None
        if not isinstance(secrets, dict):
            raise RequestError("standard input is not a JSON object")
        body.update({k: secrets[k] for k in ("windmill_token", "git_token") if k in secrets})
    for env_key, field in (("WINDMILL_TOKEN", "windmill_token"), ("GIT_TOKEN", "git_token")):
        if field not in body and os.environ.get(env_key):
            body[field] = os.environ[env_key]
    skip = {"command", "secrets_from_stdin"}
    for field, value in vars(args).items():
        if field not in skip and value is not None:
            body[field] = value
    return body


if __name__ == "__main__":
    sys.exit(main())
