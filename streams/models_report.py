"""`leadstream models`: the model files checked, and what each model reads and how it levels.

Run it before saving an edit into a running worker's models directory (the worker applies
what loads; scoring/MODELS.md), or in the CI of the repository that keeps the models. With
`--baseline` (the models in use), it warns of what the worker warns of when it applies the
edit: rules testing a trait the models in use neither keep nor test.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import IO, Any

import orjson

from scoring.events import PROFILE_TYPES
from scoring.engine import Engine
from scoring.model import describe, model_files, unkept_traits
from streams.errors import InputError
from streams.tables import points


def report(models_dir: Path, as_json: bool, out: IO[str], baseline: Path | None = None, err: IO[str] | None = None) -> int:
    """Loads every model of the directory as the worker and `score` do (ModelError names the
    first problem) and prints each one's description: JSON lines, or a block of text per model.
    Given the `baseline` models, says to `err` (stderr by default) what the edit from them warns of."""
    # The engine, not the files alone: some checks need a model compiled (the fit points of a
    # lead without traits, against the first line), and a model `models` passed the worker refused.
    models = Engine.from_directory(models_dir).models
    # Before the report: a baseline it cannot load was refused only once the whole report was
    # printed, so `models --json --baseline X > report` wrote a full report for a check that failed.
    in_use = Engine.from_directory(baseline).models if baseline is not None else None
    for model in models:
        described = describe(model)
        out.write(orjson.dumps(described).decode() + "\n" if as_json else _text(described))
    if in_use is not None:
        for unkept in unkept_traits(in_use, models):
            (err or sys.stderr).write(f"warning: {unkept}\n")
    return 0


def copy_models(models_dir: Path, target: Path, out: IO[str]) -> int:
    """Copies the model files of `models_dir` into `target` (made if missing) for the user to edit:
    installed with pip, the shipped models are pip's files in site-packages, replaced by the next
    install. Refuses, copying nothing, when `target` holds a model file of the same name already."""
    files = model_files(models_dir)
    if not files:
        raise InputError(f"{models_dir} holds no model files (*.toml) to copy: give --models the directory of the models")
    taken = [str(target / file.name) for file in files if (target / file.name).exists()]
    if taken:
        raise InputError(f"{', '.join(taken)} exist already: nothing was copied; copy to another directory, or move them away")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{target} is a file: give --copy-to a directory") from None
    for file in files:
        shutil.copyfile(file, target / file.name)
    out.write(f"copied {len(files)} model files ({', '.join(file.name for file in files)}) to {target}: edit them there, and run "
              f"the worker with LEADSTREAM_MODELS_DIR={target.absolute()} (scoring/MODELS.md is their reference)\n")
    return 0


def _text(d: dict[str, Any]) -> str:
    if d["unscored_types"] == ["*"]:
        unscored = "every other type"
    else:
        unscored = (f"{', '.join(d['unscored_types']) or 'none'}  (always read: {', '.join(sorted(PROFILE_TYPES))}; "
                    "other types are dead-lettered as unknown_type)")
    lines = [
        f"{d['name']}  ({d['file']})  {d['description']}".rstrip(),
        f"  products   {', '.join(d['products']) if d['products'] else 'every product (no [filter])'}",
        f"  scores     {', '.join(d['scores']) or 'nothing yet'}",
        f"  unscored   {unscored}",
        f"  levels     {_levels(d['levels'])}",
        f"  decay      {d['decay'] or 'none'}",
        f"  rules      {d['rules']} behaviour, {d['fit_rules']} fit",
    ]
    if d["account_levels"]:
        lines.insert(-1, f"  accounts   {_levels(d['account_levels'])}")
    return "\n".join(lines) + "\n\n"


def _levels(levels: list[dict[str, Any]]) -> str:
    steps = [levels[0]["level"]]
    for level in levels[1:]:
        left = f" (left below {points(level['below'])})" if level["below"] != level["at"] else ""
        steps.append(f"{level['level']} at {points(level['at'])}{left}")
    return " < ".join(steps)
