"""Rules renamed in a model file (`renamed_from`): what lead states keep under a rule's name,
carried over to its new name.

A lead's state keeps per rule name the rule's ledger entry (points, occurrences, capped,
bonuses: the lead's explanation shows them) and its cap's and bonus's window counters (earlier
versions also kept `once_per` values there, which scoring.repeat.adopt_seen moves). A rule
renamed without saying so starts anew under its new name: its cap let a window's occurrences
through again, its bonus paid a second time in a window that had paid, and explanations showed
what it had earned as a rule no longer in the model. With `renamed_from`, a state read back
carries all of it over the first time the model uses it (`ModelRuntime.adopt`, off the
per-event path), joining what the state already has under the new name.
"""

from __future__ import annotations

from typing import Iterable

from scoring.errors import ModelError
from scoring.repeat import join_counts
from scoring.rules import Rule, window_keys
from scoring.state import LeadState


def check_renames(file: str, rules: Iterable[Rule], names: set[str]) -> dict[str, str]:
    """Earlier name -> the rule's name now, for the rules of a model that give `renamed_from`;
    ModelError when an earlier name is the name of a rule of the model (`names`, [[fit]] rules
    too) or is claimed by two rules, as a rule's entries can go to one rule only."""
    renames: dict[str, str] = {}
    for rule in rules:
        for old in rule.renamed_from:
            if old in names:
                raise ModelError(f"{file}: rule '{rule.name}', field 'renamed_from': expected an earlier name no rule of "
                                 f"this model has now, got {old!r} (the name of a rule of the model)")
            if old in renames:
                also = "" if renames[old] == rule.name else f" (also claimed by rule '{renames[old]}')"
                raise ModelError(f"{file}: rule '{rule.name}', field 'renamed_from': expected an earlier name one rule "
                                 f"claims once, got {old!r}{also}")
            renames[old] = rule.name
    return renames


def adopt_renamed(state: LeadState, renames: dict[str, str]) -> None:
    """Moves what the state keeps under the earlier names of renamed rules (`renames`, from
    `check_renames`) to their names now: ledger entries add up, window counters join
    (scoring.repeat.join_counts)."""
    ledger, windows = state.ledger, state.windows
    for old, new in renames.items():
        entry = ledger.pop(old, None)
        if entry is not None:
            mine = ledger.get(new)
            ledger[new] = entry if mine is None else [a + b for a, b in zip(mine, entry)]
        for old_key, key, bonus in zip(window_keys(old), window_keys(new), (False, True)):
            counts = windows.pop(old_key, None)
            if counts is not None:
                mine_counts = windows.get(key)
                windows[key] = counts if mine_counts is None else join_counts(mine_counts, counts, bonus)
                state.windows_drop_ms = 0  # the new rule's windows may close at other times: compaction works it out again
