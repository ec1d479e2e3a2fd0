"""LEADSTREAM_STATE_DIR, Faust's data directory: made with its parents, or one line saying why not."""

from __future__ import annotations

import tempfile
from pathlib import Path

from streams.settings import Settings
from streams.worker import make_state_dir
from tests.infra import leadstream, unprivileged
from tests.scoring.support import MODELS_DIR


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


def test_directories_this_user_cannot_write_or_read_are_said_in_one_line(isolated: Settings) -> None:
    # A state directory another user owns ended in some 50 lines of Faust's traceback; a models
    # directory this user cannot read was said to hold no model files.
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:  # not pytest's, which only its owner may enter
        root = Path(scratch)
        root.chmod(0o755)
        state_dir, models = root / "state", root / "models"
        models.mkdir()
        (models / "b2b.toml").write_bytes((MODELS_DIR / "b2b.toml").read_bytes())
        state_dir.mkdir(mode=0o555)
        models.chmod(0o000)
        try:
            done = unprivileged(isolated.with_overrides(state_dir=state_dir), "worker")
            assert (done.returncode, done.stderr.strip()) == (1, (
                f"leadstream worker: cannot write LEADSTREAM_STATE_DIR={state_dir} (Permission denied): "
                "set it to a directory this user can create and write"))
            done = unprivileged(isolated.with_overrides(models_dir=models), "models")
            assert (done.returncode, done.stderr.strip()) == (1, (
                f"leadstream models: {models}: cannot read this directory (Permission denied): let this user read it, "
                "or set LEADSTREAM_MODELS_DIR, or --models where a command takes it"))
        finally:
            models.chmod(0o700)
            state_dir.chmod(0o700)
