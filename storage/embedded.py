"""An embedded PostgreSQL server in a project-local data directory.

Used when ``DATABASE_URL`` is not set, so that ``make run`` works on a fresh machine.
The server binaries come from the ``pgserver`` wheel (PostgreSQL 16, no system
install needed), or from a system PostgreSQL when those are not usable.

PostgreSQL refuses to run as root. When this program runs as root it runs the server
binaries with the rights of the existing ``postgres`` system user (``runuser``); it
never creates users and never changes permissions outside its own data directory.
When it cannot start a server it raises :class:`EmbeddedPostgresError` with the exact
thing to do instead (set ``DATABASE_URL``).

The server listens on a unix socket inside the data directory only (no TCP port), is
reused across runs, and is stopped by :meth:`EmbeddedPostgres.stop` if this process
started it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger("storage.embedded")

_SOCKET_PATH_LIMIT = 100  # sun_path is 108 bytes including ".s.PGSQL.5432" and NUL
ADVICE = (
    "Set DATABASE_URL to a PostgreSQL server you can use, e.g. "
    "DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres"
)


class EmbeddedPostgresError(RuntimeError):
    pass


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
    return [d for d in dirs if (d / "initdb").exists() and (d / "pg_ctl").exists()]


class EmbeddedPostgres:
    """A private PostgreSQL server whose data lives in ``data_dir``.

    ``start()`` initialises the directory on first use, starts the server (or reuses
    one already running on it) and returns a connection URL.
    """

    def __init__(self, data_dir: os.PathLike | str):
        self.root = Path(data_dir).resolve()
        self.pgdata = self.root / "pgdata"
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
                + ADVICE + ", or run as a normal user."
            ) from None
        if not shutil.which("runuser"):
            raise EmbeddedPostgresError("running as root needs 'runuser' to start PostgreSQL as 'postgres'. " + ADVICE)
        self._run_as = "postgres"

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self._run_as, "--", *args] if self._run_as else list(args)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)

    def _usable_by_server(self, path: Path) -> bool:
        if self._run_as is None:
            return os.access(path, os.X_OK)
        return self._run("test", "-x", str(path)).returncode == 0

    def _pick_bindir(self) -> Path:
        wanted = None
        version_file = self.pgdata / "PG_VERSION"
        if version_file.exists():
            wanted = version_file.read_text().strip()
        for bindir in _candidate_bindirs():
            if not self._usable_by_server(bindir / "postgres"):
                continue
            if wanted is not None:
                out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True)
                if f" {wanted}." not in out.stdout and not out.stdout.strip().endswith(f" {wanted}"):
                    continue
            return bindir
        who = f"the '{self._run_as}' user" if self._run_as else "this user"
        raise EmbeddedPostgresError(
            f"no PostgreSQL server binaries usable by {who} were found"
            + (f" for the existing data directory (version {wanted}) at {self.pgdata}" if wanted else "")
            + ". " + ADVICE
        )

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        return self.pgdata

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir), safe='')}"

    def _prepare_dir(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_dir / ".s.PGSQL.5432")) > _SOCKET_PATH_LIMIT:
            raise EmbeddedPostgresError(
                f"the project path is too long for a PostgreSQL unix socket ({self.socket_dir}). "
                "Move the project to a shorter path, or " + ADVICE
            )
        if not self.pgdata.exists():
            self.pgdata.mkdir(mode=0o700)
        if self._run_as:
            pw = pwd.getpwnam(self._run_as)
            if self.pgdata.stat().st_uid != pw.pw_uid:
                os.chown(self.pgdata, pw.pw_uid, pw.pw_gid)  # our own directory only
            if not self._usable_by_server(self.pgdata):
                raise EmbeddedPostgresError(
                    f"the 'postgres' system user cannot reach {self.pgdata} (a parent directory is not "
                    "searchable by other users). Move the project somewhere world-searchable such as /srv or "
                    "/opt, or " + ADVICE
                )

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        out = self._run(str(self._bindir / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-instructions")
        if out.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {out.stderr.strip()[-500:]}. " + ADVICE)

    def is_running(self) -> bool:
        if self._bindir is None:
            return False
        return self._run(str(self._bindir / "pg_ctl"), "status", "-D", str(self.pgdata)).returncode == 0

    def start(self) -> str:
        """Start (or reuse) the server; return its connection URL. Blocking."""
        self._choose_user()
        self._prepare_dir()
        self._bindir = self._pick_bindir()
        self._initdb()
        if self.is_running():
            log.info("embedded PostgreSQL already running at %s", self.pgdata)
            return self.url()
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' -c fsync=on"
        began = time.monotonic()
        out = self._run(str(self._bindir / "pg_ctl"), "start", "-w", "-t", "30", "-D", str(self.pgdata),
                        "-l", str(self.pgdata / "server.log"), "-o", options)
        if out.returncode != 0:
            tail = ""
            try:
                tail = (self.pgdata / "server.log").read_text()[-500:]
            except OSError:
                pass
            raise EmbeddedPostgresError(f"PostgreSQL did not start: {out.stderr.strip()} {tail}. " + ADVICE)
        self._started_here = True
        log.info("embedded PostgreSQL started at %s in %.2fs (binaries %s%s)", self.pgdata,
                 time.monotonic() - began, self._bindir, f", as user {self._run_as}" if self._run_as else "")
        return self.url()

    def stop(self) -> None:
        """Stop the server if this object started it. Blocking."""
        if not self._started_here or self._bindir is None:
            return
        self._run(str(self._bindir / "pg_ctl"), "stop", "-D", str(self.pgdata), "-m", "fast", "-w")
        self._started_here = False
        log.info("embedded PostgreSQL stopped")
