"""The models directory as a running worker watches it: edits load or are reported, and the
worker keeps the models it has until the files load again."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from scoring import Engine, ModelError
from streams import metrics
from streams.model_reload import UNSETTLED_LOOKS, ModelDirectory, fingerprint
from tests.scoring.support import beside_a_named_pipe

MODEL = (
    '[model]\nname = "{name}"\n[[rules]]\nname = "signed up"\nevent = "signup"\npoints = {points}\n'
    '[thresholds]\nbase = "lead"\nladder = [{{ level = "mql", at = 20 }}]\n'
)


def save(directory: Path, file: str, text: str) -> None:
    (directory / f"{file}.tmp").write_text(text)
    os.replace(directory / f"{file}.tmp", directory / file)


def rule_points(directory: ModelDirectory) -> list[tuple[str, float]]:
    return [(model.name, model.rules[0].points) for model in directory.current.engine.models]


def settled(directory: ModelDirectory) -> Engine | None:
    """Two polls: the first finds the files changed, the second finds them as the first did and
    takes the edit up."""
    assert directory.poll() is None
    return directory.poll()


def test_an_edit_that_loads_replaces_the_models(tmp_path: Path) -> None:
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    directory = ModelDirectory(tmp_path)
    first = directory.current
    assert directory.poll() is None  # nothing changed
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    assert settled(directory) is None  # saved again, the same bytes: nothing to apply

    save(tmp_path, "a.toml", MODEL.format(name="a", points=7))
    save(tmp_path, "b.toml", MODEL.format(name="b", points=1))
    engine = settled(directory)
    assert engine is not None and engine is directory.current.engine
    assert rule_points(directory) == [("a", 7), ("b", 1)]
    assert directory.current.fingerprint != first.fingerprint and directory.error is None
    assert directory.poll() is None


def test_files_still_being_written_are_taken_up_once_the_next_poll_finds_them_unchanged(tmp_path: Path) -> None:
    """A file saved in place (truncated, then written in parts) was loaded as the poll found
    it: an empty file reported as a broken edit, and one cut before its [accounts] (valid TOML)
    applied, the account it rolled up crossing to its level a second time once the rest came."""
    whole = MODEL.format(name="a", points=7) + '[accounts]\nbase = "cold"\nladder = [{ level = "hot", at = 20 }]\n'
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    directory = ModelDirectory(tmp_path)
    rejected = metrics.MODEL_RELOADS.labels("rejected")._value.get()
    with open(tmp_path / "a.toml", "w") as file:  # truncated: found empty
        assert directory.poll() is None
        file.write(whole[: whole.index("[accounts]")])
        file.flush()
        assert directory.poll() is None  # found cut before [accounts]
        file.write(whole[whole.index("[accounts]"):])
    assert directory.poll() is None  # found whole, but changed since the last look
    assert (rule_points(directory), directory.error, metrics.MODEL_RELOADS.labels("rejected")._value.get()) == ([("a", 5)], None, rejected)
    engine = directory.poll()
    assert engine is not None and engine.models[0].accounts is not None and rule_points(directory) == [("a", 7)]
    save(tmp_path, "a.toml", MODEL.format(name="a", points=8))
    assert directory.poll() is None
    save(tmp_path, "a.toml", whole)  # undone before the next poll: nothing to apply
    assert settled(directory) is None and rule_points(directory) == [("a", 7)]


def test_files_rewritten_at_every_look_are_taken_up_after_a_bound(tmp_path: Path) -> None:
    """Files rewritten more often than the interval (here a comment stamped at each write) were
    never found as the look before found them, and their edit never applied while that went on."""
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    directory = ModelDirectory(tmp_path)
    for look in range(1, UNSETTLED_LOOKS):
        save(tmp_path, "a.toml", MODEL.format(name="a", points=7) + f"# written at look {look}\n")
        assert directory.poll() is None
    save(tmp_path, "a.toml", MODEL.format(name="a", points=7) + f"# written at look {UNSETTLED_LOOKS}\n")
    assert directory.poll() is not None and rule_points(directory) == [("a", 7)]
    # The count starts again: an edit that settles is taken up at the next look, as ever.
    save(tmp_path, "a.toml", MODEL.format(name="a", points=9))
    assert directory.poll() is None and rule_points(directory) == [("a", 7)]
    assert directory.poll() is not None and rule_points(directory) == [("a", 9)]


@pytest.mark.parametrize("cut", ["[accounts]", 'points = 8'])
def test_files_written_while_they_load_are_taken_up_once_they_settle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: str) -> None:
    """A write begun between the poll's look and the load was loaded part-way, past the wait for
    the files to settle: cut before its [accounts] (valid TOML) it was applied, labelled with the
    fingerprint of the files the look found; cut mid-line, reported as a broken edit."""
    whole = MODEL.format(name="a", points=8) + '[accounts]\nbase = "cold"\nladder = [{ level = "hot", at = 20 }]\n'
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    directory = ModelDirectory(tmp_path)
    save(tmp_path, "a.toml", MODEL.format(name="a", points=7))
    assert directory.poll() is None  # found changed
    load = Engine.from_directory

    def loaded_while_written(path: Path) -> Engine:
        with open(tmp_path / "a.toml", "w") as file:
            file.write(whole[: whole.index(cut)])
            file.flush()
            try:
                return load(path)
            finally:
                file.write(whole[whole.index(cut):])

    monkeypatch.setattr(Engine, "from_directory", loaded_while_written)
    rejected = metrics.MODEL_RELOADS.labels("rejected")._value.get()
    assert directory.poll() is None
    assert (rule_points(directory), directory.error, metrics.MODEL_RELOADS.labels("rejected")._value.get()) == ([("a", 5)], None, rejected)
    monkeypatch.setattr(Engine, "from_directory", load)
    engine = directory.poll()  # the files as the load left them, and as they are still
    assert engine is not None and engine.models[0].accounts is not None and rule_points(directory) == [("a", 8)]
    assert directory.current.fingerprint == fingerprint(tmp_path)


def test_an_edit_saved_while_the_worker_first_loads_is_taken_up_at_the_next_poll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's first look was taken before its first load only: an edit saved while the
    files loaded was found by the next poll and loaded by the one after."""
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    load = Engine.from_directory

    def loaded_while_edited(path: Path) -> Engine:
        try:
            return load(path)
        finally:
            save(tmp_path, "a.toml", MODEL.format(name="a", points=7))

    monkeypatch.setattr(Engine, "from_directory", loaded_while_edited)
    directory = ModelDirectory(tmp_path)
    monkeypatch.setattr(Engine, "from_directory", load)
    assert rule_points(directory) == [("a", 5)]
    engine = directory.poll()
    assert engine is not None and rule_points(directory) == [("a", 7)]
    assert directory.current.fingerprint == fingerprint(tmp_path)


def fingerprints_exported() -> list[dict[str, str]]:
    return [sample.labels for family in metrics.MODELS_FINGERPRINT.collect() for sample in family.samples]


def test_the_fingerprint_of_the_models_in_use_is_exported_with_the_group(tmp_path: Path) -> None:
    # Before, only GET /models/ showed it: two workers of one group scoring with different files
    # (a rule worth 10 on one, 100 on the other) scored alike events by partition, and nothing
    # compared them. One series a worker, which the shipped LeadstreamModelsDiffer compares.
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    directory = ModelDirectory(tmp_path, "leadstream")
    first = directory.current.fingerprint
    assert fingerprints_exported() == [{"app_id": "leadstream", "fingerprint": first}]
    save(tmp_path, "a.toml", MODEL.format(name="a", points='"five"'))  # does not load: still scoring with the first
    assert settled(directory) is None and fingerprints_exported() == [{"app_id": "leadstream", "fingerprint": first}]
    save(tmp_path, "a.toml", MODEL.format(name="a", points=6))
    assert settled(directory) is not None
    assert fingerprints_exported() == [{"app_id": "leadstream", "fingerprint": directory.current.fingerprint}] != [
        {"app_id": "leadstream", "fingerprint": first}]


def test_an_edit_that_does_not_load_is_reported_and_the_models_stay(tmp_path: Path) -> None:
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    directory = ModelDirectory(tmp_path)
    rejected = metrics.MODEL_RELOADS.labels("rejected")._value.get()

    save(tmp_path, "a.toml", MODEL.format(name="a", points='"five"'))
    assert settled(directory) is None
    assert directory.error is not None and "a.toml" in directory.error and "points" in directory.error
    assert rule_points(directory) == [("a", 5)]
    assert metrics.MODELS_BROKEN._value.get() == 1
    assert metrics.MODEL_RELOADS.labels("rejected")._value.get() == rejected + 1
    assert directory.poll() is None  # reported once, not at every poll
    assert metrics.MODEL_RELOADS.labels("rejected")._value.get() == rejected + 1
    assert directory.describe()["error"] == directory.error

    save(tmp_path, "a.toml", MODEL.format(name="a", points=6))
    save(tmp_path, "b.toml", MODEL.format(name="a", points=1))  # a second model of the same name
    assert settled(directory) is None and "also in a.toml" in str(directory.error)
    (tmp_path / "b.toml").unlink()
    assert settled(directory) is not None
    assert (rule_points(directory), directory.error, metrics.MODELS_BROKEN._value.get()) == ([("a", 6)], None, 0)


def test_a_broken_edit_put_back_as_the_models_in_use_were_is_no_edit(tmp_path: Path) -> None:
    """A typo undone (or a deleted file restored) brought the files back to those the models in
    use were loaded from: they were loaded again, counted as an edit applied, and the stages
    dropped their live states."""
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    directory = ModelDirectory(tmp_path)
    first = directory.current
    save(tmp_path, "a.toml", MODEL.format(name="a", points='"five"'))
    assert settled(directory) is None and directory.error is not None
    applied = metrics.MODEL_RELOADS.labels("applied")._value.get()
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    assert directory.poll() is None
    assert (directory.error, metrics.MODELS_BROKEN._value.get(), directory.current) == (None, 0, first)
    assert directory.poll() is None and directory.current is first
    assert metrics.MODEL_RELOADS.labels("applied")._value.get() == applied
    save(tmp_path, "a.toml", MODEL.format(name="a", points=6))  # an edit after it is taken up as ever
    assert settled(directory) is not None and rule_points(directory) == [("a", 6)]


def test_an_edit_testing_a_trait_the_models_did_not_keep_is_applied_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fit rule added on `company_size`, which the model neither kept nor tested: the states
    of leads scored before hold no value of it, so they kept fit 0 where `leadstream score`
    gave the points, and nothing said so."""
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    directory = ModelDirectory(tmp_path)
    assert directory.describe()["warnings"] == []
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5) + '[[fit]]\nname = "big"\npoints = 7\ntraits.company_size = { gte = 50 }\n')
    with caplog.at_level("WARNING", logger="leadstream.worker"):
        assert settled(directory) is not None
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "a.toml: fit rule 'big' tests trait 'company_size'" in warned[0], warned
    assert "model 'a' neither kept nor tested" in warned[0] and "LEADSTREAM_APP_ID" in warned[0]
    assert directory.describe()["warnings"] == [warned[0].removeprefix("model edit applied: ")]
    save(tmp_path, "a.toml", MODEL.format(name="a", points=6) + '[[fit]]\nname = "big"\npoints = 7\ntraits.company_size = { gte = 50 }\n')
    assert settled(directory) is not None and directory.describe()["warnings"] == []  # the next edit's: kept since


def test_a_loader_bug_is_reported_as_an_edit_that_does_not_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    directory = ModelDirectory(tmp_path)

    def broken(path: Path) -> None:
        raise IndexError("list index out of range")

    monkeypatch.setattr("streams.model_reload.Engine.from_directory", broken)
    save(tmp_path, "a.toml", MODEL.format(name="a", points=6))
    assert settled(directory) is None  # not raised out of the worker's reload task
    assert directory.error == "IndexError('list index out of range') while loading the models (a bug: please report it)"
    assert rule_points(directory) == [("a", 5)] and metrics.MODELS_BROKEN._value.get() == 1


def test_a_directory_that_does_not_load_at_start_stops_the_worker(tmp_path: Path) -> None:
    save(tmp_path, "a.toml", MODEL.format(name="a", points="[1]"))
    with pytest.raises(ModelError, match="a.toml"):
        ModelDirectory(tmp_path)


def test_the_fingerprint_follows_names_and_bytes_of_model_files_only(tmp_path: Path) -> None:
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    before = fingerprint(tmp_path)
    (tmp_path / "notes.txt").write_text("not a model")
    assert fingerprint(tmp_path) == before
    os.replace(tmp_path / "a.toml", tmp_path / "renamed.toml")
    assert fingerprint(tmp_path) != before


def test_a_named_pipe_among_the_model_files_changes_the_fingerprint_without_waiting(tmp_path: Path) -> None:
    """The worker takes the fingerprint at its start and at every poll: read as a file, a FIFO
    named like a model held it there for good (the reload loop too)."""
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    before = fingerprint(tmp_path)
    assert beside_a_named_pipe(tmp_path / "b.toml", lambda: fingerprint(tmp_path)) != before


def test_an_editors_hidden_files_beside_a_model_are_not_models(tmp_path: Path) -> None:
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    directory = ModelDirectory(tmp_path)
    # Emacs, while a.toml has unsaved changes: a lock link to nowhere.
    os.symlink("root@host.4242:1764892800", tmp_path / ".#a.toml")
    (tmp_path / ".a.toml").write_text("a hidden copy, half written")
    assert settled(directory) is None and directory.error is None
    save(tmp_path, "a.toml", MODEL.format(name="a", points=7))  # saved: the edit applies
    assert settled(directory) is not None and directory.error is None
    assert rule_points(directory) == [("a", 7)]
    assert rule_points(ModelDirectory(tmp_path)) == [("a", 7)]


def test_the_view_describes_the_models_in_use(tmp_path: Path) -> None:
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5) + '[filter]\nproduct = ["x", "w"]\n')
    described = ModelDirectory(tmp_path).describe()
    assert described["models"] == [{
        "name": "a", "file": "a.toml", "description": "", "products": ["w", "x"], "scores": ["signup"], "unscored_types": [],
        "rules": 1, "fit_rules": 0, "levels": [{"level": "lead"}, {"level": "mql", "at": 20, "below": 20}], "decay": None,
        "account_levels": None,
    }]  # fmt: skip
    assert described["directory"] == str(tmp_path) and described["error"] is None


def test_a_large_model_loads_while_the_worker_s_loop_goes_on(tmp_path: Path) -> None:
    """A model of thousands of rules takes seconds to load: loaded on the worker's loop, the
    worker answered nothing meanwhile (its health checks timed out, its group dropped it)."""
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5))
    directory = ModelDirectory(tmp_path)
    rules = "".join(f'[[rules]]\nname = "page {n}"\nevent = "page_view"\npoints = 1\n'
                    f'properties.url = {{ glob = ["*/category-{n}/*", "*/landing-{n}*"] }}\n' for n in range(3000))
    save(tmp_path, "a.toml", MODEL.format(name="a", points=5).replace("[thresholds]", rules + "[thresholds]"))

    assert directory.poll() is None  # found changed: the next poll loads it

    async def scenario() -> tuple[int, Engine | None]:
        ticks = 0
        loading = asyncio.ensure_future(directory.reload())
        while not loading.done():
            ticks += 1
            await asyncio.sleep(0.001)
        return ticks, await loading

    ticks, engine = asyncio.run(scenario())
    assert engine is not None and len(engine.models[0].rules) == 3001
    assert ticks > 10  # the loop ran its other tasks while the files loaded (none at all before)
