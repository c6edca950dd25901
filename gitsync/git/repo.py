"""Git plumbing for one backup target, run with a hardened environment.

The repository is bare (``G``) with a separate work tree (``W``) that the
service owns: nothing from the remote is ever executed or followed
(shared security notes, section c). Commits are built with plumbing
(``commit-tree -p <remote tip>``) so their parent is always explicit, and
pushes are plain fast-forwards of a fully qualified ref: never forced.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.errors import CommandError, GitAuthError, GitError
from gitsync.git import credentials
from gitsync.secrets import Redactor, Secret
from gitsync.windmill.process import Completed, run

log = logging.getLogger(__name__)

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"

# Attributes that override anything a hostile .gitattributes in the tree asks
# for: no filters (which run programs), no line-ending or encoding rewriting.
NEUTRAL_ATTRIBUTES = (
    "* -filter -ident -text -eol -working-tree-encoding -export-subst -diff -merge\n"
)

# Runtime configuration for every git call (security notes c.3), injected
# through GIT_CONFIG_COUNT so it is neither in argv nor in a config file.
HARDENING_CONFIG: tuple[tuple[str, str], ...] = (
    ("protocol.allow", "never"),
    ("protocol.https.allow", "always"),
    ("transfer.credentialsInUrl", "die"),
    ("http.followRedirects", "false"),
    ("http.sslVerify", "true"),
    ("core.hooksPath", "/dev/null"),
    ("core.symlinks", "false"),
    ("core.fsmonitor", "false"),
    ("core.protectNTFS", "true"),
    ("core.protectHFS", "true"),
    ("core.autocrlf", "false"),
    ("core.quotePath", "false"),
    ("transfer.fsckObjects", "true"),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("gc.auto", "0"),
    ("gc.autoDetach", "false"),
    ("maintenance.auto", "false"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("init.defaultBranch", "main"),
    ("advice.detachedHead", "false"),
    ("color.ui", "false"),
    ("push.default", "nothing"),
)

# git's wording for failures a user can act on (LANG=C keeps it stable).
_AUTH_PATTERNS = (
    "Authentication failed",
    "could not read Username",
    "could not read Password",
    "The requested URL returned error: 401",
    "The requested URL returned error: 403",
    "terminal prompts disabled",
)
_NOT_FOUND_PATTERNS = ("not found", "The requested URL returned error: 404")
_UNREACHABLE_PATTERNS = (
    "Could not resolve host",
    "Failed to connect",
    "Couldn't connect",
    "Connection refused",
    "Connection reset",
    "Empty reply from server",
    "Operation too slow",
    "timed out",
    "RPC failed",
    "early EOF",
    "unexpected disconnect",
    # TLS sessions cut short (gnutls and OpenSSL builds of git say it differently).
    "gnutls_handshake() failed",
    "non-properly terminated",
    "SSL_connect",
    "SSL_ERROR_SYSCALL",
)
_TLS_PATTERNS = ("SSL certificate problem", "server certificate verification failed", "SSL")


@dataclass(frozen=True)
class Identity:
    name: str
    email: str


@dataclass(frozen=True)
class Change:
    status: str  # "added" | "modified" | "deleted"
    path: str
    # The file's blob: the new one, or for a deletion the old one.
    blob: str = field(default="", compare=False)


@dataclass(frozen=True)
class PushOutcome:
    ok: bool
    rejected_non_fast_forward: bool = False


@dataclass
class GitRepo:
    """A bare repository plus work tree for one (remote, branch) target."""

    settings: Settings
    git_dir: Path
    work_tree: Path
    home: Path
    remote_url: str
    branch: str
    token: Secret
    username: str
    redactor: Redactor
    deadline: Deadline
    # Records the running child so a crash's orphan can be ended next time.
    pid_file: Path | None = None
    _cred_fd: int | None = field(default=None, init=False)

    @property
    def remote_ref(self) -> str:
        return f"refs/heads/{self.branch}"

    @property
    def tracking_ref(self) -> str:
        return f"refs/remotes/origin/{self.branch}"

    @property
    def local_ref(self) -> str:
        return f"refs/heads/{self.branch}"

    # -- environment -----------------------------------------------------

    def _env(
        self, extra_config: Sequence[tuple[str, str]] = (), *, work_tree: bool, **extra: str
    ) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_SYSTEM": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": "https",
            "GIT_PROTOCOL_FROM_USER": "0",
            "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
            "GIT_HTTP_LOW_SPEED_TIME": "60",
            "GIT_LITERAL_PATHSPECS": "1",
            "GIT_DIR": str(self.git_dir),
        }
        if work_tree:
            env["GIT_WORK_TREE"] = str(self.work_tree)
        if self.settings.git_ssl_cainfo:
            env["GIT_SSL_CAINFO"] = str(self.settings.git_ssl_cainfo)
        config = [*HARDENING_CONFIG, ("safe.directory", str(self.git_dir)), *extra_config]
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for i, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        env.update(extra)
        return env

    def _git(
        self,
        *args: str,
        step: str,
        stdin: bytes | None = None,
        ok_codes: Sequence[int] = (0,),
        network: bool = False,
        env_extra: Mapping[str, str] | None = None,
        work_tree: bool = False,
    ) -> Completed:
        extra_config: list[tuple[str, str]] = []
        pass_fds: tuple[int, ...] = ()
        if network:
            # Only the steps that talk to the remote can see the credential.
            if self._cred_fd is None:
                raise RuntimeError("a network git call outside GitRepo.credentials()")
            extra_config = credentials.helper_config(self.remote_url, self._cred_fd)
            pass_fds = (self._cred_fd,)
        return run(
            [self.settings.git_bin, *args],
            step=step,
            env=self._env(extra_config, work_tree=work_tree, **(env_extra or {})),
            cwd=self.work_tree if work_tree else self.git_dir,
            timeout=self.deadline.for_command(self.settings.command_timeout),
            redactor=self.redactor,
            stdin=stdin,
            pass_fds=pass_fds,
            ok_codes=ok_codes,
            pid_file=self.pid_file,
            max_file_bytes=self.settings.max_file_bytes,
        )

    @contextmanager
    def credentials(self) -> Iterator[None]:
        with credentials.credential_fd(self.username, self.token) as fd:
            self._cred_fd = fd
            try:
                yield
            finally:
                self._cred_fd = None

    # -- local repository --------------------------------------------------

    def ensure_initialized(self) -> None:
        """Create the bare repository, or repair what an interrupted run left behind."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.work_tree.mkdir(parents=True, exist_ok=True)
        if not (self.git_dir / "HEAD").is_file():
            if self.git_dir.exists():
                shutil.rmtree(self.git_dir)
            self.git_dir.mkdir(parents=True)
            self._git(
                "init",
                "--quiet",
                "--bare",
                str(self.git_dir),
                step="git init",
                env_extra={"GIT_DIR": str(self.git_dir)},
            )
            # Bare repositories keep no reflog by default; we want one so a
            # commit that never reached the remote can always be found again.
            self._git("config", "core.logAllRefUpdates", "always", step="git config")
        info = self.git_dir / "info"
        info.mkdir(exist_ok=True)
        (info / "attributes").write_text(NEUTRAL_ATTRIBUTES)
        self._remove_stale_locks()

    def _remove_stale_locks(self) -> None:
        # Callers hold the target's lock, so any *.lock here belongs to a git
        # process that died (e.g. the service was SIGKILLed mid-commit): the
        # index's, HEAD's, packed-refs', the scratch indexes' and any ref's.
        candidates = list(self.git_dir.glob("*.lock"))
        refs = self.git_dir / "refs"
        if refs.is_dir():
            candidates.extend(refs.rglob("*.lock"))
        for lock in candidates:
            log.warning("removing stale git lock %s", lock.relative_to(self.git_dir))
            lock.unlink(missing_ok=True)
        for scratch in ("scratch-index", "export-index"):
            (self.git_dir / scratch).unlink(missing_ok=True)

    def recover_after_crash(self) -> None:
        """Repair what a killed run may have left; move a broken repository aside.

        The index is only a cache of the work tree (rebuilt from a commit on
        every sync), so it is dropped. If the object store is broken, the
        repository is kept as ``corrupt-<time>.git`` beside it (commits that
        never reached the remote can be salvaged from there) and a fresh one
        takes its place; the next fetch fills it from the remote.
        """
        self._remove_stale_locks()
        (self.git_dir / "index").unlink(missing_ok=True)
        check = self._git(
            "fsck",
            "--connectivity-only",
            "--no-progress",
            "--no-dangling",
            step="git fsck",
            ok_codes=range(256),
        )
        if check.returncode != 0:
            aside = self.git_dir.with_name(f"corrupt-{int(time.time())}.git")
            log.error(
                "repository %s failed fsck; moved to %s and starting afresh",
                self.git_dir,
                aside.name,
                extra={"detail": check.stderr[-2000:]},
            )
            self.git_dir.rename(aside)
            self.ensure_initialized()

    def list_files(self, commit: str | None) -> list[str]:
        if commit is None:
            return []
        out = self._git("ls-tree", "-r", "-z", "--name-only", commit, step="git ls-tree").raw_stdout
        return [p for p in out.decode("utf-8", errors="surrogateescape").split("\0") if p]

    def rev_parse(self, rev: str) -> str | None:
        result = self._git(
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            rev,
            step="git rev-parse",
            ok_codes=(0, 1),
        )
        return result.stdout.strip() or None if result.returncode == 0 else None

    def has_commit(self, commit: str) -> bool:
        result = self._git(
            "cat-file", "-e", f"{commit}^{{commit}}", step="git cat-file", ok_codes=(0, 1, 128)
        )
        return result.returncode == 0

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        result = self._git(
            "merge-base",
            "--is-ancestor",
            ancestor,
            descendant,
            step="git merge-base",
            ok_codes=(0, 1),
        )
        return result.returncode == 0

    def update_ref(self, ref: str, new: str, old: str | None = None, *, reason: str) -> None:
        args = ["update-ref", "-m", reason, ref, new]
        if old is not None:
            args.append(old)
        self._git(*args, step="git update-ref")

    def delete_ref(self, ref: str) -> None:
        self._git("update-ref", "-d", ref, step="git update-ref", ok_codes=(0, 1))

    def checkout_tree(self, commit: str | None) -> None:
        """Make the index and work tree exactly ``commit`` (or empty), discarding anything else."""
        if commit is None:
            self._git("read-tree", "--empty", step="git read-tree")
            _empty_directory(self.work_tree)
            return
        self._git("read-tree", "--reset", "-u", commit, step="git read-tree", work_tree=True)
        # Leftovers of an interrupted run that git does not track.
        self._git("clean", "-ffdxq", step="git clean", work_tree=True)

    def stage_all(self) -> str:
        """Stage the work tree and return the resulting tree id."""
        # --force: a .gitignore arriving from the remote must not hide backups.
        self._git("add", "--all", "--force", step="git add", work_tree=True)
        return self._git("write-tree", step="git write-tree").stdout.strip()

    def tree_of(self, commit: str | None) -> str:
        if commit is None:
            return EMPTY_TREE
        return self._git("rev-parse", f"{commit}^{{tree}}", step="git rev-parse").stdout.strip()

    def diff_trees(self, old_tree: str, new_tree: str) -> list[Change]:
        out = self._git(
            "diff-tree",
            "-r",
            "-z",
            "--no-renames",
            "--raw",
            "--abbrev=40",
            old_tree,
            new_tree,
            step="git diff-tree",
        ).raw_stdout
        fields = out.decode("utf-8", errors="surrogateescape").split("\0")
        names = {"A": "added", "M": "modified", "D": "deleted", "T": "modified"}
        changes = []
        # Each change is ":<old mode> <new mode> <old sha> <new sha> <status>" then the path.
        for meta, path in zip(fields[0::2], fields[1::2], strict=False):
            if meta:
                _old_mode, _new_mode, old_sha, new_sha, status = meta.lstrip(":").split(" ")
                kind = names.get(status[0], "modified")
                changes.append(Change(kind, path, old_sha if kind == "deleted" else new_sha))
        return changes

    def ls_tree(self, tree: str) -> dict[str, tuple[str, str]]:
        """Every file of a tree: path -> (mode, blob id)."""
        out = self._git("ls-tree", "-r", "-z", "--full-tree", tree, step="git ls-tree").raw_stdout
        entries = {}
        for record in out.decode("utf-8", errors="surrogateescape").split("\0"):
            if record:
                meta, path = record.split("\t", 1)
                mode, _type, sha = meta.split(" ")
                entries[path] = (mode, sha)
        return entries

    def tree_with(self, base_tree: str, updates: dict[str, tuple[str, str] | None]) -> str:
        """``base_tree`` with paths set to (mode, blob) or removed (None); uses a scratch index."""
        index = self.git_dir / "scratch-index"
        index.unlink(missing_ok=True)
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            self._git("read-tree", base_tree, step="git read-tree", env_extra=env)
            lines = []
            for path, entry in sorted(updates.items()):
                mode, sha = entry if entry else ("0", "0" * 40)
                lines.append(f"{mode} {sha}\t{path}")
            self._git(
                "update-index",
                "-z",
                "--index-info",
                step="git update-index",
                stdin="\0".join(lines).encode() + b"\0",
                env_extra=env,
            )
            return self._git("write-tree", step="git write-tree", env_extra=env).stdout.strip()
        finally:
            index.unlink(missing_ok=True)

    def commit_tree(
        self, tree: str, parent: str | None, message: str, author: Identity, committer: Identity
    ) -> str:
        args = ["commit-tree", tree]
        if parent:
            args += ["-p", parent]
        env = {
            "GIT_AUTHOR_NAME": author.name,
            "GIT_AUTHOR_EMAIL": author.email,
            "GIT_COMMITTER_NAME": committer.name,
            "GIT_COMMITTER_EMAIL": committer.email,
        }
        # The message goes on stdin: it is built from request data.
        return self._git(
            *args, "-F", "-", step="git commit", stdin=message.encode(), env_extra=env
        ).stdout.strip()

    # -- remote ------------------------------------------------------------

    def remote_tip(self) -> str | None:
        """The branch's commit on the remote, or None if the branch (or repository) is empty."""
        try:
            result = self._git(
                "ls-remote",
                "--exit-code",
                "--heads",
                "--end-of-options",
                self.remote_url,
                self.remote_ref,
                step="git ls-remote",
                network=True,
                ok_codes=(0, 2),
            )
        except CommandError as exc:
            raise classify_git_error(exc, "Git fetch") from None
        if result.returncode == 2:
            return None
        for line in result.stdout.splitlines():
            sha, _, ref = line.partition("\t")
            if ref == self.remote_ref:
                return sha
        return None

    def fetch(self) -> None:
        try:
            self._git(
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-recurse-submodules",
                "--no-write-fetch-head",
                "--end-of-options",
                self.remote_url,
                f"+{self.remote_ref}:{self.tracking_ref}",
                step="git fetch",
                network=True,
            )
        except CommandError as exc:
            raise classify_git_error(exc, "Git fetch") from None

    def fetch_all(self) -> None:
        """Every branch and tag of the remote (for restores from any reference)."""
        try:
            self._git(
                "fetch",
                "--quiet",
                "--prune",
                "--no-recurse-submodules",
                "--no-write-fetch-head",
                "--end-of-options",
                self.remote_url,
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
                step="git fetch",
                network=True,
            )
        except CommandError as exc:
            raise classify_git_error(exc, "Git fetch") from None

    def resolve(self, ref: str) -> str | None:
        """A fetched branch, a tag, or a commit id (full or abbreviated) to a commit id."""
        candidates = [f"refs/remotes/origin/{ref}", f"refs/tags/{ref}"]
        if re.fullmatch(r"[0-9a-f]{7,40}", ref):
            candidates.append(ref)
        for candidate in candidates:
            commit = self.rev_parse(f"{candidate}^{{commit}}")
            if commit:
                return commit
        return None

    def export_tree(self, commit: str, prefix: str, dest: Path) -> None:
        """Write the files of ``commit:prefix`` into ``dest`` (links become plain files)."""
        index = self.git_dir / "export-index"
        index.unlink(missing_ok=True)
        env = {"GIT_INDEX_FILE": str(index)}
        treeish = f"{commit}:{prefix}" if prefix else commit
        try:
            self._git("read-tree", treeish, step="git read-tree", env_extra=env)
            self._git(
                "checkout-index",
                "--all",
                "--force",
                step="git checkout-index",
                env_extra={**env, "GIT_WORK_TREE": str(dest)},
            )
        finally:
            index.unlink(missing_ok=True)

    def log_touching(self, ref: str, prefix: str) -> list[tuple[str, str, str, str, list[str]]]:
        """(commit, date, author, subject, files) per commit under ``prefix``, newest first."""
        args = [
            "log",
            "--no-renames",
            "--name-only",
            "-z",
            "--format=%x1e%H%x1f%aI%x1f%an <%ae>%x1f%s",
            ref,
        ]
        if prefix:
            args += ["--", prefix]
        out = self._git(*args, step="git log").raw_stdout.decode("utf-8", errors="replace")
        entries = []
        for record in out.split("\x1e")[1:]:
            head, _, names = record.partition("\n")
            commit, date, author, subject = head.split("\x1f", 3)
            files = [n.strip("\n") for n in names.split("\0") if n.strip("\n")]
            entries.append((commit, date, author, subject, files))
        return entries

    def push(self, commit: str) -> PushOutcome:
        try:
            result = self._git(
                "push",
                "--porcelain",
                "--no-verify",
                "--end-of-options",
                self.remote_url,
                f"{commit}:{self.remote_ref}",
                step="git push",
                network=True,
                ok_codes=(0, 1),
            )
        except CommandError as exc:
            raise classify_git_error(exc, "Git push") from None
        if result.returncode == 0:
            return PushOutcome(ok=True)
        text = result.stdout + "\n" + result.stderr
        if re.search(r"\[rejected\].*\((fetch first|non-fast-forward|stale info)\)", text):
            return PushOutcome(ok=False, rejected_non_fast_forward=True)
        # Another pusher held the ref's lock at that instant: the same lost
        # race as a non-fast-forward, seen from the server's side.
        if re.search(r"\[remote rejected\].*\((failed to update ref|cannot lock ref)", text):
            return PushOutcome(ok=False, rejected_non_fast_forward=True)
        raise classify_git_error(
            CommandError("git push", 1, result.stdout, result.stderr), "Git push"
        )


class RepositoryCorrupt(GitError):
    """The service's own copy is damaged (a power loss, a full disk): rebuild it."""

    code = "repository_corrupt"


# git's words for a damaged object store or index.
_CORRUPT_PATTERNS = (
    "is empty",
    "is corrupt",
    "corrupt loose object",
    "bad object",
    "unable to read",
    "index file smaller than expected",
    "bad signature",
    "loose object",
    "inflate",
    "did not receive expected object",
)


def is_corruption(exc: Exception) -> bool:
    """Did this failure come from a damaged local repository?"""
    if isinstance(exc, RepositoryCorrupt):
        return True
    if isinstance(exc, CommandError):
        text = f"{exc.stdout}\n{exc.stderr}"
        return any(p in text for p in _CORRUPT_PATTERNS) and "remote:" not in text
    return False


def classify_git_error(exc: CommandError, what: str) -> GitError:
    """Turn git's output into a message a user can act on."""
    text = f"{exc.stdout}\n{exc.stderr}"
    detail = exc.detail
    if any(p in text for p in _CORRUPT_PATTERNS) and "remote:" not in text:
        return RepositoryCorrupt(
            f"{what} failed: the service's copy of the repository is damaged", detail=detail
        )
    if any(p in text for p in _AUTH_PATTERNS):
        return GitAuthError(
            f"{what} failed: authentication error (check git_token and that it "
            "may write to the repository)",
            detail=detail,
        )
    if "remote rejected" in text or "pre-receive hook declined" in text:
        reason = re.search(r"\[remote rejected\][^(]*\(([^)]*)\)", text)
        why = f" ({reason.group(1)})" if reason else ""
        return GitError(f"{what} failed: the Git host rejected the push{why}", detail=detail)
    if any(p in text for p in _TLS_PATTERNS) and "certificate" in text:
        return GitError(
            f"{what} failed: the Git host's TLS certificate could not be verified "
            "(set GIT_SSL_CAINFO for a private CA)",
            detail=detail,
        )
    if re.search(r"returned error: 30[1278]", text):
        return GitError(
            f"{what} failed: the Git host answered with a redirect, which is not "
            "followed; use the repository's final URL",
            detail=detail,
        )
    if "repository" in text and any(p in text for p in _NOT_FOUND_PATTERNS):
        return GitError(f"{what} failed: repository not found", detail=detail)
    if "No space left" in text or "File too large" in text:
        return GitError(
            f"{what} failed: no space left on the service's disk (or a file above MAX_FILE_BYTES)",
            detail=detail,
        )
    server_error = re.search(r"returned error: (5\d\d)", text)
    if server_error:
        return GitError(
            f"{what} failed: the Git host answered HTTP {server_error.group(1)}",
            detail=detail,
            transient=True,
        )
    if any(p in text for p in _UNREACHABLE_PATTERNS):
        return GitError(
            f"{what} failed: could not reach the Git host", detail=detail, transient=True
        )
    return GitError(f"{what} failed (exit code {exc.returncode})", detail=detail)


def _empty_directory(path: Path) -> None:
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
