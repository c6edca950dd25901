"""``windmill-git-sync``: run the service, or one sync from cron or CI.

Secrets are read from the environment (WINDMILL_TOKEN, GIT_TOKEN) or, with
``--secrets-from-stdin``, from a JSON object on standard input; never from
argv, which every local user can read in ``ps``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import logs
from .config import Settings
from .errors import ConfigError, WindmillGitSyncError
from .sync import SyncService, success_message
from .sync_request import parse_sync_request

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="windmill-git-sync", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service (POST /sync)")
    one = commands.add_parser("sync", help="sync one workspace now and exit")
    one.add_argument("--workspace", default=None)
    one.add_argument("--git-remote-url", default=None)
    one.add_argument("--git-branch", default=None)
    one.add_argument("--git-user-name", default=None)
    one.add_argument("--git-user-email", default=None)
    one.add_argument("--git-username", default=None)
    one.add_argument(
        "--allow-mass-deletion",
        action="store_true",
        default=None,
        help="accept a pull that deletes most of the backup",
    )
    one.add_argument(
        "--secrets-from-stdin",
        action="store_true",
        help='read {"windmill_token": ..., "git_token": ...} from standard input',
    )
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_mapping(os.environ)
    except ConfigError as exc:
        print(f"windmill-git-sync: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(settings.log_level, settings.log_format)

    if args.command == "serve":
        from .server import serve

        serve(settings)
        return EXIT_OK
    return _sync_once(settings, args)


def _sync_once(settings: Settings, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.secrets_from_stdin:
        try:
            secrets = json.loads(sys.stdin.read() or "{}")
        except json.JSONDecodeError:
            return _fail("standard input is not a JSON object", EXIT_USAGE)
        if not isinstance(secrets, dict):
            return _fail("standard input is not a JSON object", EXIT_USAGE)
        body.update({k: secrets[k] for k in ("windmill_token", "git_token") if k in secrets})
    for env_key, field in (("WINDMILL_TOKEN", "windmill_token"), ("GIT_TOKEN", "git_token")):
        if field not in body and os.environ.get(env_key):
            body[field] = os.environ[env_key]
    for field in (
        "workspace",
        "git_remote_url",
        "git_branch",
        "git_user_name",
        "git_user_email",
        "git_username",
        "allow_mass_deletion",
    ):
        value = getattr(args, field)
        if value is not None:
            body[field] = value
    try:
        req = parse_sync_request(body)
        service = SyncService(settings)
        service.prepare_data_dir()
        result = service.sync(req.to_job())
    except WindmillGitSyncError as exc:
        return _fail(exc.message, EXIT_USAGE if exc.http_status < 500 else EXIT_FAILED)
    print(
        json.dumps(
            {
                "success": True,
                "message": success_message(result),
                **result.to_dict(),
            },
            indent=2,
        )
    )
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    print(json.dumps({"success": False, "message": message}), file=sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
