"""The plugin system: a plugin from outside the package, found through the
``shopcast.plugins`` entry point group like the built-in ones, sees its hooks
called; unknown hooks are refused at start-up; [plugins] disables plugins;
migrations are versioned per component."""

import sys
import textwrap
import time

import pytest
import trio

from shopcast.client import connect
from shopcast.plugins import Database, Migration, PluginError, PluginManager, StorageError
from shopcast.server._app import ServerApp
from shopcast.server._config import load_config

PROBE = '''
from shopcast.plugins import Migration, hookimpl

CALLS = []


class ProbePlugin:
    @hookimpl
    def shopcast_register_tables(self):
        return [Migration("probe", 1, "CREATE TABLE probe_notes (note TEXT NOT NULL);")]

    @hookimpl
    async def shopcast_account_created(self, account):
        CALLS.append(("account_created", account["name"]))

    @hookimpl
    def shopcast_room_created(self, room):
        CALLS.append(("room_created", room["title"]))

    @hookimpl
    def shopcast_viewer_joined(self, room_id, subject):
        CALLS.append(("viewer_joined", room_id, subject))

    @hookimpl
    def shopcast_viewer_left(self, room_id, subject):
        CALLS.append(("viewer_left", room_id, subject))

    @hookimpl
    def shopcast_room_may_schedule(self, room):
        if "forbidden" in room.get("title", ""):
            return "the title names a forbidden good"
        return None


class BadPlugin:
    def shopcast_room_exploded(self, room):
        pass
'''


@pytest.fixture
def probe_dist(tmp_path, monkeypatch):
    """A distribution outside the package, installed on sys.path with an entry
    point in the shopcast.plugins group, as pip would install a third party's."""
    module = f"shopcast_probe_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(PROBE))
    dist = tmp_path / "shopcast_probe-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shopcast-probe\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[shopcast.plugins]\nprobe = {module}:ProbePlugin\nbad = {module}:BadPlugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


async def test_external_plugin_sees_its_hooks_called(probe_dist, server_factory, fast_config,
                                                     make_client, room_fields):
    config = {**fast_config, "plugins": {"enabled": ["*"], "disabled": ["bad"]}}
    api = make_client(await server_factory(config))
    probe = api.app.plugins.get("probe")
    assert probe is not None and api.app.plugins.get("bad") is None
    host = await api.user("maria", "host")
    await api.call("POST", "/api/v1/rooms", room_fields(title="Spring launch"), token=host)
    calls = sys.modules[probe_dist].CALLS
    assert ("account_created", "maria") in calls and ("room_created", "Spring launch") in calls
    vetoed = await api.call("POST", "/api/v1/rooms", room_fields(title="forbidden ivory"), token=host)
    assert vetoed.status == 409 and "forbidden good" in vetoed.body["error"]["message"]
    tables = await api.app.db.table_names()
    assert "probe_notes" in tables
    versions = await api.app.db.read(lambda c: dict(c.execute(
        "SELECT component, version FROM schema_versions").fetchall()))
    assert versions["probe"] == 1 and versions["accounts"] == 1 and versions["rooms"] == 2

    # A viewer's session joining and leaving a room reaches the plugin, once each.
    app = api.app
    broadcast = app.relay.publish("room-x")
    broadcast.track("video").write_frame(b"frame", keyframe=True)
    token = app.tokens.mint(subject="vera", role="viewer", room="room-x", ttl_s=60, now=time.time())
    async with connect(f"https://127.0.0.1:{app.port}/moq", token=token,
                       certificate_sha256=app.certificate.sha256_hex) as viewer:
        for _ in range(2):
            upstream = await viewer.subscribe("room-x", "video")
            with trio.fail_after(10):
                await upstream.frames.receive()
    with trio.fail_after(10):
        while ("viewer_left", "room-x", "account:vera") not in calls:
            await trio.sleep(0.01)
    assert [c for c in calls if c[0].startswith("viewer_")] == [
        ("viewer_joined", "room-x", "account:vera"), ("viewer_left", "room-x", "account:vera")]


def test_unknown_hook_is_refused_at_start_up(probe_dist, tmp_path):
    config = load_config(environ={}, overrides={
        "server": {"data_dir": str(tmp_path / "d")}, "plugins": {"enabled": ["*"], "disabled": []}})
    with pytest.raises(PluginError, match="shopcast_room_exploded"):
        ServerApp(config)


def test_enabled_must_name_installed_plugins():
    manager = PluginManager(enabled=["accounts", "nonexistent"])
    with pytest.raises(PluginError, match="nonexistent"):
        manager.load_entry_points()


def test_dependencies_are_checked():
    manager = PluginManager(enabled=["rooms"])
    manager.load_entry_points()
    with pytest.raises(PluginError, match="needs the plugin 'accounts'"):
        manager.check()


async def test_migrations_are_versioned_per_component(tmp_path):
    path = tmp_path / "x.db"
    steps = [Migration("a", 1, "CREATE TABLE a1 (x);"), Migration("b", 1, "CREATE TABLE b1 (x);")]
    db = Database(path)
    await db.open(steps)
    await db.close()
    db = Database(path)
    await db.open([*steps, Migration("a", 2, "ALTER TABLE a1 ADD COLUMN y;")])
    versions = await db.read(lambda c: dict(c.execute("SELECT * FROM schema_versions").fetchall()))
    assert versions == {"a": 2, "b": 1}
    journal = await db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    assert journal == "wal"
    await db.close()
    db = Database(path)
    with pytest.raises(StorageError, match="newer"):
        await db.open(steps)
    await db.close()
    db = Database(tmp_path / "y.db")
    with pytest.raises(StorageError, match="numbered"):
        await db.open([Migration("c", 2, "SELECT 1;")])
    await db.close()



def test_operator_is_created_from_the_cli(tmp_path, monkeypatch, capsys):
    import io

    from shopcast.server._cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("operator-password\n"))
    assert main(["operator", "create", "root_op", "--data-dir", str(tmp_path)]) == 0
    assert "operator root_op created" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("operator-password\n"))
    assert main(["operator", "create", "root_op", "--data-dir", str(tmp_path)]) == 2
    assert "taken" in capsys.readouterr().err
