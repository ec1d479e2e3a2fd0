"""Fit (explicit) scoring: points from what is known about the person and company.

Fit rules test traits only (title keywords, company size, industry, country, e-mail domain
class) and are re-evaluated whenever a trait changes; fit points never decay. E-mail domains
are classed as competitor, disposable, free or business (in that order of precedence) from
lists shipped in scoring/data, which a model can replace or extend in its `[domains]` table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable

from scoring.config import Table
from scoring.rules import Condition, parse_conditions

_LIST_FILES = {
    "free": "free_email_domains.txt",
    "disposable": "disposable_email_domains.txt",
    "competitor": "competitor_domains.txt",
}

#: Distinct e-mail domains `DomainLists.classify` remembers.
_SEEN_DOMAINS = 16384


@dataclass(frozen=True, slots=True)
class FitRule:
    """`points` while the lead's traits meet every condition."""

    name: str
    points: float
    conditions: tuple[Condition, ...]


class DomainLists:
    """E-mail domain -> class, precedence resolved once: competitor, disposable, free."""

    __slots__ = ("classes", "_seen")

    def __init__(self, free: frozenset[str], disposable: frozenset[str], competitor: frozenset[str]) -> None:
        classes = dict.fromkeys(free, "free")
        classes.update(dict.fromkeys(disposable, "disposable"))
        classes.update(dict.fromkeys(competitor, "competitor"))
        self.classes = classes
        #: Domains as written -> class. Fit scoring classifies the lead's address for every
        #: identify and every crossing or summary, and few domains recur across leads
        #: (gmail.com, the customers' companies); at most _SEEN_DOMAINS, then it starts over.
        self._seen: dict[str, str] = {}

    def classify(self, email: Any) -> str | None:
        """'competitor', 'disposable', 'free' or 'business' for an e-mail address; None when
        the value is not an address. Subdomains belong to their domain (eu.rival.io is rival.io)."""
        if email.__class__ is not str:
            return None
        written = email.rpartition("@")[2]
        if not written or len(written) == len(email):
            return None
        found = self._seen.get(written)
        if found is None:
            found = self._lookup(domain_key(written))
            if len(self._seen) >= _SEEN_DOMAINS:
                self._seen.clear()
            self._seen[written] = found
        return found

    def _lookup(self, domain: str) -> str:
        classes = self.classes
        while True:
            found = classes.get(domain)
            if found is not None:
                return found
            dot = domain.find(".")
            if dot < 0:
                return "business"
            domain = domain[dot + 1 :]


def domain_key(domain: str) -> str:
    """A domain as the lists are looked up by: lower case, without the trailing dot of a fully
    qualified name (jane@mailinator.com. is delivered to mailinator.com), and in its ASCII
    (punycode) form when internationalised, as mail servers see it: bücher.de is
    xn--bcher-kva.de, and fullwidth letters or an ideographic full stop are the ASCII ones."""
    domain = domain.strip().lower()
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:  # an empty or overlong label: no domain, kept as written
            pass
    return domain.rstrip(".")


def shipped_list(kind: str) -> frozenset[str]:
    """One of the shipped domain lists: one domain a line, `#` starts a comment."""
    text = resources.files("scoring").joinpath("data", _LIST_FILES[kind]).read_text(encoding="utf-8")
    return frozenset(domain_key(line.split("#", 1)[0]) for line in text.splitlines() if line.split("#", 1)[0].strip())


def parse_domains(table: Table | None) -> DomainLists:
    """The shipped lists, each replaced (`replace = [...]`) or extended (`add = [...]`)."""
    if table is not None:
        table.check_keys(_LIST_FILES)
    lists = {}
    for kind in _LIST_FILES:
        override = None if table is None else table.table(kind)
        domains = shipped_list(kind)
        if override is not None:
            override.check_keys(("replace", "add"))
            # An empty list empties it: the shipped competitors are an example, applied to every
            # model that does not replace them (oracle.com was never "business").
            replaced = () if override.raw("replace", None) == [] else override.strings("replace", None)
            if replaced is not None:
                domains = _domains(override, "replace", replaced)
            domains |= _domains(override, "add", override.strings("add", ()))
        lists[kind] = domains
    return DomainLists(**lists)


#: A domain as `domain_key` gives it: dot-separated labels of letters, digits and inner hyphens.
_DOMAIN = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def _domains(table: Table, key: str, written: Iterable[str]) -> frozenset[str]:
    """The domains of a [domains] list; an entry that is none would never match an address."""
    out = set()
    for entry in written:
        domain = domain_key(entry)
        if len(domain) > 253 or not _DOMAIN.fullmatch(domain):
            raise table.error(key, f"domains such as \"rival.io\" (no '@', spaces or URL), got {entry!r} among them")
        out.add(domain)
    return frozenset(out)


def parse_fit_rule(file: str, data: dict[str, Any], number: int) -> FitRule:
    table = Table(file, f"fit rule #{number}", data)
    name = table.string("name")
    table.where = f"fit rule '{name}'"
    table.check_keys(("name", "points", "traits"))
    conditions = parse_conditions(table, ("traits",))
    if not conditions:
        raise table.error("traits", "at least one trait condition, such as traits.title = { words = [\"vp\"] }")
    return FitRule(name, table.number("points"), conditions)
