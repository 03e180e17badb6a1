"""What `invoke model.publish` refuses and what it leaves behind, through the real CLI with a
`-f` settings file: versions named like the store's pointer are refused with the store
unchanged; an older version does not move `latest` unless `--promote`; a publish stopped
midway cleans up after itself on SIGTERM, and `model.list --orphans` shows (and says how to
remove) what a killed one left."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from test_model_store_races import run_stalled_publisher, store_spec  # noqa: F401
from test_signed_fetch_cli import invoke, settings_for

from modelship import model_store
from modelship.stores import StoreObjectMissing

pytestmark = pytest.mark.integration


def contents(store) -> dict[str, bytes]:
    """Every object in the store (a folder store's hidden partial files too); nothing for a
    container or bucket that does not exist yet."""
    try:
        keys = store.list_keys() + store.leftover_partials()
    except StoreObjectMissing as missing:
        assert missing.whole_store
        return {}
    return {key: store.read_bytes(key) for key in keys}


def pointer(store) -> str:
    return json.loads(store.read_bytes("latest.json"))["version"]


def publish(config, *args):
    return invoke(config, "model.publish", "--env", "local", *args)


def test_versions_named_like_the_pointer_are_refused_and_nothing_is_written(tmp_path):
    spec = (f"file://{tmp_path / 'store'}", "", "")
    config = settings_for(tmp_path, spec)
    code, out, err = publish(config, "--version", "1")
    assert code == 0, err
    store = model_store.open_store(*spec)
    before = contents(store)
    for version in ("latest", "Latest", "latest.json", "LATEST.JSON"):
        for dry in ((), ("--dry",)):
            done = invoke(config, *dry, "model.publish", "--env", "local", "--version", version)
            code, out, err = done
            assert code == 1 and len(err) == 1, done
            assert f"'{version}' cannot be a model version: the store uses that name" in err[0]
            assert contents(store) == before
    assert pointer(store) == "1"


def test_an_older_version_keeps_latest_unless_promoted_and_says_which(
        tmp_path, store_spec):  # noqa: F811
    config = settings_for(tmp_path, store_spec)
    store = model_store.open_store(*store_spec)
    steps = [
        ((), "20240612.080000", "latest moved to 20240612.080000 (the first version)",
         "20240612.080000"),
        ((), "20240611.093000", "latest stays at 20240612.080000 (20240611.093000 is older; "
                                "pass --promote", "20240612.080000"),
        (("--promote",), "20240610.120000",
         "latest moved from 20240612.080000 to 20240610.120000 (--promote)", "20240610.120000"),
        ((), "20240613.000000", "latest moved from 20240610.120000 to 20240613.000000 (newer)",
         "20240613.000000"),
    ]
    for flags, version, says, latest in steps:
        before = contents(store)
        code, out, err = invoke(config, "--dry", "model.publish", "--env", "local",
                                "--version", version, *flags)
        assert code == 0 and says.replace("moved", "would move").replace(
            "stays", "would stay") in out, (out, err)
        assert contents(store) == before  # --dry wrote nothing
        code, out, err = publish(config, "--version", version, *flags)
        assert code == 0, err
        lines = out.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("published ") and says in lines[0], out
        assert pointer(store) == latest
    # The versions are all there; only the pointer was held back.
    code, out, err = invoke(config, "model.list", "--env", "local")
    assert code == 0 and out.count("2024061") == 4 and "* 20240613.000000" in out, out


@pytest.mark.parametrize("where", ["after-upload", "mid-upload"])
def test_a_publish_stopped_with_sigterm_removes_what_it_uploaded(tmp_path, store_spec,  # noqa: F811
                                                                 make_model, where):
    if where == "mid-upload" and not store_spec[0].startswith("file://"):
        pytest.skip("only a folder store has partial files; the services drop unfinished "
                    "uploads themselves")
    store = model_store.open_store(*store_spec)
    model_store.publish(store, make_model("0", seed=1), "0")
    before = contents(store)
    code, stderr = run_stalled_publisher(store_spec, make_model("1", seed=2), "1", False,
                                         tmp_path / "marker", where=where,
                                         stop_signal=signal.SIGTERM)
    assert code == 1 and "The publish was stopped (SIGTERM)" in stderr, stderr
    assert contents(store) == before
    config = settings_for(tmp_path, store_spec)
    code, out, err = invoke(config, "model.list", "--env", "local", "--orphans")
    assert code == 0 and out.startswith("no orphaned files in "), (out, err)


@pytest.mark.parametrize("where", ["after-upload", "mid-upload"])
def test_model_list_orphans_shows_what_a_killed_publish_left_and_how_to_remove_it(
        tmp_path, store_spec, make_model, where):  # noqa: F811
    if where == "mid-upload" and not store_spec[0].startswith("file://"):
        pytest.skip("only a folder store has partial files")
    store = model_store.open_store(*store_spec)
    model_store.publish(store, make_model("0", seed=1), "0")
    published = contents(store)
    run_stalled_publisher(store_spec, make_model("1", seed=2), "1", False,
                          tmp_path / "marker", where=where, stop_signal=signal.SIGKILL)
    left = sorted(set(contents(store)) - set(published))
    assert len(left) == 1 and left[0].startswith("1/"), left
    assert left[0].endswith(".partial") == (where == "mid-upload")

    config = settings_for(tmp_path, store_spec)
    before = contents(store)
    code, out, err = invoke(config, "--dry", "model.list", "--env", "local", "--orphans")
    assert code == 0 and f"{store.uri}/{left[0]}" in out, (out, err)
    code, out, err = invoke(config, "model.list", "--env", "local", "--orphans")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0] == f"{store.uri}/{left[0]}", (out, err)
    assert lines[1].startswith("1 file(s) in ") and lines[2].startswith(
        "to remove them once no publish is running: "), out
    assert contents(store) == before  # listing changes nothing
    # The listing of versions is unchanged by the leftover.
    code, out, err = invoke(config, "model.list", "--env", "local")
    assert code == 0 and "* 0 " in out and "\n  1 " not in out, out

    if store_spec[0].startswith("file://"):
        remove = lines[2].split(": ", 1)[1]
        subprocess.run(["bash", "-c", remove], check=True)
    else:
        store.delete(left[0])
    code, out, err = invoke(config, "model.list", "--env", "local", "--orphans")
    assert code == 0 and out.startswith("no orphaned files in "), out
    assert contents(store) == published
