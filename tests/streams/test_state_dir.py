"""LEADSTREAM_STATE_DIR, Faust's data directory: made with its parents, or one line saying why not."""

from __future__ import annotations

from pathlib import Path

from streams.settings import Settings
from streams.worker import make_state_dir
from tests.infra import leadstream


def test_its_missing_parents_are_made(tmp_path: Path) -> None:
    state_dir = tmp_path / "not" / "there" / "yet" / "state"
    make_state_dir(Settings.from_env().with_overrides(state_dir=state_dir))
    assert state_dir.is_dir()


def test_one_that_cannot_be_made_stops_the_worker_before_it_joins_its_group(isolated: Settings, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    state_dir = tmp_path / "a-file" / "state"
    done = leadstream(isolated.with_overrides(state_dir=state_dir), "worker", check=False, timeout=60)
    assert (done.returncode, done.stderr.strip()) == (1, (
        f"leadstream worker: cannot create LEADSTREAM_STATE_DIR={state_dir} (Not a directory): "
        "set it to a directory this user can create and write"))
