"""An embedded PostgreSQL server in a project-local data directory.

Used when ``DATABASE_URL`` is not set, so that ``make run`` works on a fresh machine.
The server binaries come from the ``pgserver`` wheel (PostgreSQL 16, no system
install needed), or from a system PostgreSQL when those are not usable.

PostgreSQL refuses to run as root. When this program runs as root it runs the server
binaries with the rights of the existing ``postgres`` system user (``runuser``); it
never creates users and never changes permissions on anything it did not create.
When the ``postgres`` user cannot reach the project's data directory (the project
sits in a private folder such as root's home or a ``mktemp -d`` directory), the data
is kept in a per-project folder under the system temp directory instead
(:func:`fallback_dir`), created for this purpose and owned by ``postgres``; when the
binaries of the wheel are out of that user's reach too (the wheel is inside the
private project's ``.venv``) and no system binaries fit, the wheel's installation is
copied into that folder once. When it cannot start a server it raises
:class:`EmbeddedPostgresError` with the exact thing to do instead (set
``DATABASE_URL``).

The server listens on a unix socket inside the data directory only (no TCP port), is
reused across runs, and is stopped by :meth:`EmbeddedPostgres.stop` if this process
started it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger("storage.embedded")

_SOCKET_PATH_LIMIT = 100  # sun_path is 108 bytes including ".s.PGSQL.5432" and NUL
_SOCKET_NAME = ".s.PGSQL.5432"
ADVICE = (
    "Set DATABASE_URL to a PostgreSQL server you can use, e.g. "
    "DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres"
)
OR_ADVICE = "set" + ADVICE[len("Set") :]  # after "..., or "


class EmbeddedPostgresError(RuntimeError):
    pass


def fallback_dir(data_dir: os.PathLike | str) -> Path:
    """The folder under the system temp directory that holds the data of ``data_dir``
    when, as root, the ``postgres`` user cannot reach ``data_dir`` itself.

    One per data directory (named by a short hash of its resolved path), so that
    every run of the same project finds the same folder.
    """
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"aged-position-manager-{digest}"


def _candidate_bindirs() -> list[Path]:
    dirs: list[Path] = []
    spec = importlib.util.find_spec("pgserver")  # locate the wheel without importing it
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / "pginstall" / "bin")
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            dirs.append(Path(out.stdout.strip()))
        except (OSError, subprocess.CalledProcessError):
            pass
    dirs.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    return dirs


def _is_server_bindir(path: Path) -> bool:
    return (path / "initdb").exists() and (path / "pg_ctl").exists() and (path / "postgres").exists()


def _is_self_contained(bindir: Path) -> bool:
    """A relocatable installation such as the pgserver wheel's ``pginstall`` tree."""
    top = bindir.parent
    return bindir.name == "bin" and top.name == "pginstall" and (top / "lib").is_dir() and (top / "share").is_dir()


def _tree_size(top: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


class EmbeddedPostgres:
    """A private PostgreSQL server whose data lives in ``data_dir``.

    ``start()`` initialises the directory on first use, starts the server (or reuses
    one already running on it) and returns a connection URL. ``bindirs`` are the server
    binary directories to try, in order (default: the pgserver wheel, ``pg_config
    --bindir``, ``/usr/lib/postgresql/*/bin``).

    As root, when the ``postgres`` user cannot reach ``data_dir``, the data lives in
    :func:`fallback_dir` instead; :attr:`pgdata` names the directory in use once
    ``start()`` has run.
    """

    def __init__(self, data_dir: os.PathLike | str, *, bindirs: Iterable[os.PathLike | str] | None = None):
        self.root = Path(data_dir).resolve()
        self.pgdata = self.root / "pgdata"
        self._bindirs = None if bindirs is None else [Path(d) for d in bindirs]
        self._started_here = False
        self._run_as: str | None = None
        self._bindir: Path | None = None

    # --- running commands with the right rights --------------------------------------

    def _choose_user(self) -> None:
        if os.geteuid() != 0:
            self._run_as = None
            return
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise EmbeddedPostgresError(
                "PostgreSQL refuses to run as root and there is no 'postgres' system user to run it as. "
                + ADVICE
                + ", or run as a normal user."
            ) from None
        if not shutil.which("runuser"):
            raise EmbeddedPostgresError("running as root needs 'runuser' to start PostgreSQL as 'postgres'. " + ADVICE)
        self._run_as = "postgres"

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self._run_as, "--", *args] if self._run_as else list(args)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)

    def _usable_by_server(self, path: Path, *, writable: bool = False) -> bool:
        if self._run_as is None:
            return os.access(path, os.X_OK | (os.W_OK if writable else 0))
        test = ["test", "-x", str(path)] + (["-a", "-w", str(path)] if writable else [])
        return self._run(*test).returncode == 0

    def _server_version(self, bindir: Path) -> str:
        # Run as the server user: a copy in the temp folder is that user's to change.
        return self._run(str(bindir / "postgres"), "--version").stdout.strip()

    def _pick_bindir(self) -> Path:
        wanted = None
        version_file = self.pgdata / "PG_VERSION"
        if version_file.exists():
            wanted = version_file.read_text()[:16].strip()
            if not re.fullmatch(r"\d+(\.\d+)?", wanted):
                raise EmbeddedPostgresError(f"{version_file} is not a PostgreSQL version file. " + ADVICE)

        def fits(bindir: Path) -> bool:
            if not _is_server_bindir(bindir) or not self._usable_by_server(bindir / "postgres"):
                return False
            if wanted is None:
                return True
            version = self._server_version(bindir)
            return f" {wanted}." in version or version.endswith(f" {wanted}")

        candidates = _candidate_bindirs() if self._bindirs is None else self._bindirs
        for bindir in candidates:
            if fits(bindir):
                return bindir
        # As root with the wheel out of the server user's reach (inside a private
        # project's .venv) and no system binaries that fit: a copy of the wheel's
        # installation in the temp folder, made once and reused.
        if self._run_as:
            wheel = next((d for d in candidates if _is_server_bindir(d) and _is_self_contained(d)), None)
            if wheel is not None:
                copied = self._copy_installation(wheel.parent) / "bin"
                if fits(copied):
                    return copied
        who = f"the '{self._run_as}' user" if self._run_as else "this user"
        raise EmbeddedPostgresError(
            f"no PostgreSQL server binaries usable by {who} were found"
            + (f" for the existing data directory (version {wanted}) at {self.pgdata}" if wanted else "")
            + ". "
            + ADVICE
        )

    # --- the temp folder (as root, when the project is out of the server user's reach) ---

    def _fallback_home(self) -> Path:
        """Create, or check and reuse, :func:`fallback_dir` for this data directory.

        Created here: owned by the server user, mode 0700. Found already there: used only
        if it is a real directory owned by the server user or root and not writable by
        others; it is never chmod-ed or chown-ed.
        """
        if self._run_as is None:
            raise RuntimeError("the temp folder is only for a server that runs as another user")
        home = fallback_dir(self.root)
        pw = pwd.getpwnam(self._run_as)
        if len(str(home / "pgdata" / _SOCKET_NAME)) > _SOCKET_PATH_LIMIT:
            raise EmbeddedPostgresError(
                f"the temp directory path is too long for a PostgreSQL unix socket ({home}). "
                "Set TMPDIR to a short world-searchable directory such as /tmp, or " + OR_ADVICE
            )
        try:
            os.mkdir(home, 0o700)
        except FileExistsError:
            st = os.lstat(home)
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
                raise EmbeddedPostgresError(
                    f"{home} exists and is not a directory (a symbolic link or a file), so it was not created by "
                    "this program and is left alone. Remove it, or " + OR_ADVICE
                ) from None
            if st.st_uid not in (pw.pw_uid, 0):
                owner = _user_name(st.st_uid)
                raise EmbeddedPostgresError(
                    f"{home} exists and belongs to {owner}, not to '{self._run_as}' or root, so it was not created "
                    "by this program and is left alone. Remove it, or " + OR_ADVICE
                ) from None
            if st.st_mode & 0o022:
                raise EmbeddedPostgresError(
                    f"{home} exists and is writable by other users, so it was not created by this program and is "
                    "left alone. Remove it, or " + OR_ADVICE
                ) from None
        else:
            fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:  # the directory created just now, by us
                os.fchown(fd, pw.pw_uid, pw.pw_gid)
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)
        if not self._usable_by_server(home, writable=True):
            raise EmbeddedPostgresError(
                f"the '{self._run_as}' system user cannot use {home} (the temp directory or that folder is not open "
                "to it). Remove the folder, set TMPDIR to a world-searchable directory such as /tmp, or " + OR_ADVICE
            )
        return home

    def _copy_installation(self, pginstall: Path) -> Path:
        """Copy the self-contained installation ``pginstall`` into the temp folder (once);
        return the copy of ``pginstall``.

        The wheel's binaries find their shared libraries in ``<site-packages>/pgserver.libs``
        by a relative path, so that directory is copied alongside, in the same layout.
        """
        home = self._fallback_home()
        package = pginstall.parent
        parts = [(pginstall, Path(package.name) / pginstall.name)]
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            parts.append((libs, Path(libs.name)))
        target = home / "wheel"
        copied = target / parts[0][1]
        if target.exists() or target.is_symlink():
            return copied
        size = sum(_tree_size(source) for source, _ in parts)
        free = shutil.disk_usage(home.parent).free
        if free < size * 2:
            raise EmbeddedPostgresError(
                f"copying the PostgreSQL binaries ({size // 2**20} MiB) to {home} needs more free space than "
                f"{home.parent} has ({free // 2**20} MiB). Free some space, or " + OR_ADVICE
            )
        # Staged in a private directory of our own, then renamed into place: nothing is
        # written through a path the server user could have prepared.
        staging = Path(tempfile.mkdtemp(prefix=f"{home.name}-staging-", dir=home.parent))
        try:
            for source, relative in parts:
                shutil.copytree(source, staging / "wheel" / relative, symlinks=True)
            for directory in (staging / "wheel", staging / "wheel" / package.name):
                os.chmod(directory, 0o755)
            try:
                os.rename(staging / "wheel", target)
            except OSError:
                if not target.exists():  # not a concurrent copy that won the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info(
            "copied the PostgreSQL binaries of %s (%d MiB) to %s, where the '%s' user can run them",
            pginstall,
            size // 2**20,
            copied,
            self._run_as,
        )
        return copied

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        return self.pgdata

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir), safe='')}"

    def _prepare_dir(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if len(str(self.root / "pgdata" / _SOCKET_NAME)) > _SOCKET_PATH_LIMIT:
            raise EmbeddedPostgresError(
                f"the project path is too long for a PostgreSQL unix socket ({self.root / 'pgdata'}). "
                "Move the project to a shorter path, or " + OR_ADVICE
            )
        if self._run_as and not self._usable_by_server(self.root):
            # A parent directory is not searchable by the server user: keep the data in
            # the temp folder. initdb, running as that user, creates pgdata inside it.
            home = self._fallback_home()
            self.pgdata = home / "pgdata"
            log.info(
                "the '%s' system user cannot reach %s (a parent directory is not searchable by other "
                "users); the embedded PostgreSQL keeps its data in %s instead",
                self._run_as,
                self.root,
                self.pgdata,
            )
            return
        self.pgdata = self.root / "pgdata"
        if not self.pgdata.exists():
            self.pgdata.mkdir(mode=0o700)
        if self._run_as:
            pw = pwd.getpwnam(self._run_as)
            if self.pgdata.stat().st_uid != pw.pw_uid:
                os.chown(self.pgdata, pw.pw_uid, pw.pw_gid)  # our own directory only
            if not self._usable_by_server(self.pgdata):
                raise EmbeddedPostgresError(
                    f"the 'postgres' system user cannot reach {self.pgdata}. Move the project somewhere "
                    "world-searchable such as /srv or /opt, or " + OR_ADVICE
                )

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        assert self._bindir is not None  # picked before the data directory is prepared
        out = self._run(
            str(self._bindir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        if out.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {out.stderr.strip()[-500:]}. " + ADVICE)

    def is_running(self) -> bool:
        if self._bindir is None:
            return False
        return self._run(str(self._bindir / "pg_ctl"), "status", "-D", str(self.pgdata)).returncode == 0

    def start(self) -> str:
        """Start (or reuse) the server; return its connection URL. Blocking.

        Raises :class:`EmbeddedPostgresError`, with what to do instead, when it cannot.
        """
        try:
            return self._start()
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedPostgresError(f"the embedded PostgreSQL could not be started ({exc}). " + ADVICE) from exc

    def _start(self) -> str:
        self._choose_user()
        self._prepare_dir()
        self._bindir = self._pick_bindir()
        self._initdb()
        if self.is_running():
            log.info("embedded PostgreSQL already running at %s", self.pgdata)
            return self.url()
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' -c fsync=on"
        began = time.monotonic()
        out = self._run(
            str(self._bindir / "pg_ctl"),
            "start",
            "-w",
            "-t",
            "30",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.pgdata / "server.log"),
            "-o",
            options,
        )
        if out.returncode != 0:
            tail = ""
            try:
                tail = (self.pgdata / "server.log").read_text()[-500:]
            except OSError:
                pass
            raise EmbeddedPostgresError(f"PostgreSQL did not start: {out.stderr.strip()} {tail}. " + ADVICE)
        self._started_here = True
        log.info(
            "embedded PostgreSQL started at %s in %.2fs (binaries %s%s)",
            self.pgdata,
            time.monotonic() - began,
            self._bindir,
            f", as user {self._run_as}" if self._run_as else "",
        )
        return self.url()

    def stop(self) -> None:
        """Stop the server if this object started it. Blocking."""
        if not self._started_here or self._bindir is None:
            return
        self._run(str(self._bindir / "pg_ctl"), "stop", "-D", str(self.pgdata), "-m", "fast", "-w")
        self._started_here = False
        log.info("embedded PostgreSQL stopped")


def _user_name(uid: int) -> str:
    try:
        return f"user '{pwd.getpwuid(uid).pw_name}'"
    except KeyError:
        return f"uid {uid}"
