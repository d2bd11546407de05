"""The embedded PostgreSQL when the project sits in a private folder, and how a server
that cannot start reaches the user.

Rules: real directories, a real server started as the ``postgres`` user, ``run.py``
as a real process; nothing mocked. The private-folder tests need root and a
``postgres`` system user (the situation they are about) and say so when skipped.
"""

import asyncio
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from storage.embedded import EmbeddedPostgres, EmbeddedPostgresError, _candidate_bindirs, fallback_dir

ROOT = Path(__file__).resolve().parent.parent


def _postgres_uid():
    try:
        return pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return None


as_root_with_postgres_user = pytest.mark.skipif(
    os.geteuid() != 0 or _postgres_uid() is None,
    reason="the private-folder fallback is for root with a 'postgres' system user "
           f"(here euid={os.geteuid()}, 'postgres' user {'present' if _postgres_uid() is not None else 'missing'})",
)


def _query(url, sql):
    async def go():
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()
    loop = asyncio.new_event_loop()  # trio_asyncio replaces the policy; use a private loop
    try:
        return loop.run_until_complete(go())
    finally:
        loop.close()


def _owner_and_mode(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), stat.S_IFMT(st.st_mode)


@contextmanager
def _private_project():
    """``<tmp>/<private 0700 parent>/project/.data/postgres``, and what the server made of it."""
    parent = Path(tempfile.mkdtemp(prefix="apm-private-"))
    parent.chmod(0o700)
    data_dir = parent / "project" / ".data" / "postgres"
    servers = []
    try:
        yield parent, data_dir, servers
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(fallback_dir(data_dir), ignore_errors=True)
        shutil.rmtree(parent, ignore_errors=True)


@as_root_with_postgres_user
def test_as_root_a_project_in_a_private_folder_keeps_its_data_in_a_temp_folder(caplog):
    caplog.set_level(logging.INFO, logger="storage.embedded")
    with _private_project() as (parent, data_dir, servers):
        temp = Path(tempfile.gettempdir())
        before = {p: _owner_and_mode(p) for p in (parent, temp)}
        home = fallback_dir(data_dir)
        assert not home.exists()

        first = EmbeddedPostgres(data_dir)
        servers.append(first)
        url = first.start()
        assert _query(url, "SELECT 1") == 1
        assert first.pgdata == home / "pgdata" and (home / "pgdata" / "PG_VERSION").exists()
        assert not (data_dir / "pgdata").exists()  # nothing in the unreachable project folder
        uid, _gid, mode, kind = _owner_and_mode(home)
        assert (uid, mode, kind) == (_postgres_uid(), 0o700, stat.S_IFDIR)
        assert len(str(first.socket_dir / ".s.PGSQL.5432")) <= 100
        named = [r for r in caplog.records if r.levelno == logging.INFO and str(home) in r.getMessage()
                 and "cannot reach" in r.getMessage()]
        assert len(named) == 1 and "\n" not in named[0].getMessage()
        _query(url, "CREATE TABLE kept_across_runs (id int)")
        first.stop()
        assert not first.is_running()

        second = EmbeddedPostgres(data_dir)  # a later run finds the same folder and data
        servers.append(second)
        url = second.start()
        assert second.pgdata == home / "pgdata"
        assert _query(url, "SELECT to_regclass('kept_across_runs') IS NOT NULL") is True
        second.stop()
        assert not second.is_running()

        assert {p: _owner_and_mode(p) for p in (parent, temp)} == before


@as_root_with_postgres_user
def test_as_root_with_only_the_wheel_inside_a_private_folder_its_binaries_are_copied_once():
    wheel = next((d for d in _candidate_bindirs() if d.parent.name == "pginstall" and (d / "postgres").exists()),
                 None)
    if wheel is None:
        pytest.skip("the pgserver wheel is not installed")
    with _private_project() as (parent, data_dir, servers):
        # The wheel as it is in a private clone: inside the project's .venv.
        site = parent / "project" / ".venv" / "site-packages"
        private_wheel = site / "pgserver" / "pginstall"
        shutil.copytree(wheel.parent, private_wheel, symlinks=True)
        libs = wheel.parent.parent.parent / "pgserver.libs"  # the wheel's bundled shared libraries
        if libs.is_dir():
            shutil.copytree(libs, site / "pgserver.libs", symlinks=True)
        before = _owner_and_mode(parent)
        home = fallback_dir(data_dir)

        first = EmbeddedPostgres(data_dir, bindirs=[private_wheel / "bin"])
        servers.append(first)
        url = first.start()
        assert _query(url, "SELECT 1") == 1
        copy = home / "wheel" / "pgserver" / "pginstall"
        assert first._bindir == copy / "bin"
        copied = os.stat(copy).st_ino
        version = (home / "pgdata" / "PG_VERSION").read_text().strip()
        first.stop()

        second = EmbeddedPostgres(data_dir, bindirs=[private_wheel / "bin"])
        servers.append(second)
        url = second.start()
        assert _query(url, "SELECT 1") == 1
        assert second._bindir == copy / "bin" and os.stat(copy).st_ino == copied  # reused, not copied again
        assert (home / "pgdata" / "PG_VERSION").read_text().strip() == version
        second.stop()
        assert _owner_and_mode(parent) == before
        assert not list(Path(tempfile.gettempdir()).glob(f"{home.name}-staging-*"))


@as_root_with_postgres_user
@pytest.mark.parametrize("planted", ["symlink", "foreign owner"])
def test_a_temp_folder_not_created_by_us_is_refused_and_left_alone(planted):
    with _private_project() as (parent, data_dir, servers):
        home = fallback_dir(data_dir)
        decoy = Path(tempfile.mkdtemp(prefix="apm-decoy-"))
        try:
            if planted == "symlink":
                home.symlink_to(decoy, target_is_directory=True)
                watched = [home, decoy]
            else:
                home.mkdir(mode=0o755)
                os.chown(home, 65534, 65534)  # nobody
                watched = [home]
            before = {p: _owner_and_mode(p) for p in watched}
            server = EmbeddedPostgres(data_dir)
            servers.append(server)
            with pytest.raises(EmbeddedPostgresError, match="left alone.*DATABASE_URL") as err:
                server.start()
            assert str(home) in str(err.value)
            assert {p: _owner_and_mode(p) for p in watched} == before
            assert list(decoy.iterdir()) == [] and not (data_dir / "pgdata").exists()
            if planted == "foreign owner":
                assert list(home.iterdir()) == []
        finally:
            if home.is_symlink():
                home.unlink()
            shutil.rmtree(decoy, ignore_errors=True)


@pytest.mark.parametrize("command", [["demo", "--duration", "5", "--metrics-port", "0"], [], ["migrate"],
                                     ["status"], ["stats"]])
def test_run_py_says_what_to_do_in_one_line_and_exits_2_when_the_embedded_server_cannot_start(tmp_path, command):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["APM_DATA_DIR"] = str(tmp_path / ("x" * 120))  # too long for a unix socket: cannot work
    out = subprocess.run([sys.executable, "run.py", *command], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "Exception" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL=" in lines[0], out.stderr


@as_root_with_postgres_user
def test_run_py_refuses_a_planted_temp_folder_in_one_line(tmp_path):
    with _private_project() as (parent, data_dir, servers):
        home = fallback_dir(data_dir)
        home.symlink_to(tmp_path, target_is_directory=True)
        try:
            env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
            env["APM_DATA_DIR"] = str(data_dir.parent)
            out = subprocess.run([sys.executable, "run.py", "migrate"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=120, env=env)
            assert out.returncode == 2, out.stderr
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and str(home) in lines[0] and "DATABASE_URL=" in lines[0], out.stderr
            assert "Traceback" not in out.stderr
        finally:
            home.unlink()
