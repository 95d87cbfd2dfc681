"""Fact-set loaders: one entry point, :func:`load_facts`.

``load_facts(source, relations=None, limit=None)`` returns a :class:`Dataset`; ``source`` is one of

``builtin``
    The built-in fact set shipped with knowloc (``knowloc/resources/builtin_facts.jsonl``, in the
    JSONL format below).
``pararel:DIR`` (or just ``DIR``)
    A ParaRel directory: ``DIR/patterns/P*.jsonl`` (one ``{"pattern": "The capital of [X] is [Y] .",
    ...}`` per line) and ``DIR/facts/P*.jsonl`` (one ``{"sub_label": "Cook County", "obj_label":
    "Chicago", "uuid": "..."}`` per line).  The relations are the files present in both folders.
    Only causal templates are kept (``[Y]`` ends the sentence, see
    :func:`knowloc.data.types.is_causal_template`); templates giving the same prompt are kept
    once (the first in file order).  Fact ids are ``"<relation>:<uuid>"``, or
    ``"<relation>:<line number>"`` when a line has no ``uuid``.  Relations left without any
    causal template are not available.  :func:`knowloc.data.download.download_pararel` fetches
    this layout.
``counterfact:FILE``
    A CounterFact file (ROME's ``counterfact.json`` layout, Meng et al. 2022): a JSON list of records
    ``{"case_id": 0, "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
    "subject": "Danielle Darrieux", "target_true": {"str": "French"}, "target_new": {"str": "English"}},
    "paraphrase_prompts": ["... Danielle Darrieux, a native", ...], ...}``. Each record is a fact
    ``cf:<case_id>`` of relation ``relation_id``, object ``target_true`` and templates: the rewrite prompt (``{}``
    -> ``[X]``) and each paraphrase prompt (its last occurrence of the subject -> ``[X]``), each followed by
    ``[Y]``. The other keys (``target_new``, neighborhood, attribute and generation prompts) are not read: a
    study draws its own new objects. Records are checked as JSONL lines are (record N is line N of the messages).
a path to a ``.jsonl`` file (our own format)
    One fact per line, a JSON object::

        {"id": "capital-france", "relation": "P36", "subject": "France", "object": "Paris",
         "templates": ["The capital of [X] is [Y].", "[X]'s capital city is [Y]."]}

    - ``relation``, ``subject``, ``object``: non-empty strings (surrounding whitespace is
      stripped); ``relation`` is a free label, by convention a Wikidata property id.
    - ``templates``: a non-empty list of templates, each with ``[X]`` (subject) and ``[Y]``
      (object), and ``[Y]`` ending the sentence (only ``"."`` or ``" ."`` may follow it): the
      model must predict the object right after the prompt.  Duplicated prompts are kept once.
    - ``id``: optional, unique in the file; default ``"<relation>:<line number>"``.
    - Other keys are ignored; blank lines are skipped. A UTF-8 byte-order mark is accepted.

Duplicate facts (the same relation, subject and object under two ids, as ParaRel's fact files hold a few) are
studied once: the later ones are merged into the first (its id is kept; a JSONL duplicate's templates are added
to the first's), ``Dataset.merged`` lists ``(dropped id, kept id)`` and one warning line names them (logger
``knowloc.data``; on stderr when logging is not configured, as on the command line). A finding never counts
the same fact twice.

Filtering: ``relations`` keeps only the listed relations (an unknown one is an error listing
the available ones); ``limit`` keeps at most that many facts per relation, the first ones in file
order, so the selection is deterministic.

Every problem (missing path, malformed JSON, missing key, empty subject or object, template
without ``[X]`` or ``[Y]``, non-causal template in a JSONL file, directory without ``patterns/``
and ``facts/``) raises :class:`knowloc.errors.KnowlocError` with a one-line message naming the
file and, where it applies, the line number.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from knowloc.data.types import (
    Fact,
    Query,
    X_MARK,
    Y_MARK,
    _one_line,
    is_causal_template,
    queries_for,
)
from knowloc.errors import KnowlocError

BUILTIN_SPEC = "builtin"
PARAREL_PREFIX = "pararel:"
COUNTERFACT_PREFIX = "counterfact:"
BUILTIN_RESOURCE = "builtin_facts.jsonl"

Item = tuple[Fact, list[Query]]
MERGED_SHOWN = 3  # duplicate pairs the warning names (the rest are counted)

log = logging.getLogger("knowloc.data")


@dataclass
class Dataset:
    """A loaded fact set.

    ``items`` is a list of ``(fact, queries)`` pairs, grouped by relation (relations in
    ``relations`` order, facts in file order); ``queries`` are the fact's neighbor queries, one
    per kept template.  Iterating, indexing and ``len`` act on ``items``, so a ``Dataset`` can be
    used wherever a ``list[tuple[Fact, list[Query]]]`` is read.

    ``relations`` lists the relations present in ``items``; ``templates`` maps each of them to
    its kept templates (for JSONL input: every template used by some fact, first-seen order);
    ``source`` is the spec it was loaded from; ``merged`` lists the duplicate facts merged into an
    earlier one with the same relation, subject and object, as ``(dropped id, kept id)``.
    """

    items: list[Item]
    relations: list[str]
    templates: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""
    merged: list[tuple[str, str]] = field(default_factory=list)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):  # int -> Item, slice -> list[Item]
        return self.items[index]

    @property
    def facts(self) -> list[Fact]:
        """All facts, in ``items`` order."""
        return [fact for fact, _ in self.items]

    @property
    def queries(self) -> list[Query]:
        """All queries of all facts, flattened in ``items`` order."""
        return [query for _, queries in self.items for query in queries]

    def content_hash(self) -> str:
        """sha256 of the facts and their templates as loaded (ids, relations, subjects, objects, template texts,
        in order), independent of the path or file layout they came from: what a study's identity records."""
        canon = [[fact.id, fact.relation, fact.subject, fact.object, [q.template for q in queries]]
                 for fact, queries in self.items]
        return hashlib.sha256(json.dumps(canon, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()

    def queries_of(self, fact: Fact | str) -> list[Query]:
        """The neighbor queries of a fact (given as a :class:`Fact` or its id)."""
        fact_id = fact.id if isinstance(fact, Fact) else fact
        for item_fact, queries in self.items:
            if item_fact.id == fact_id:
                return queries
        raise KnowlocError(f"fact {fact_id!r} not in dataset {self.source or ''}".rstrip())

    def across_relations(self) -> list[Item]:
        """The items in rounds: every relation's first fact (in file order), then every relation's second, ...
        (what a benchmark of a few queries reads, so that they span the relations and their prompt lengths)."""
        by_relation: dict[str, list[Item]] = {}
        for item in self.items:
            by_relation.setdefault(item[0].relation, []).append(item)
        rounds = itertools.zip_longest(*by_relation.values())
        return [item for round_ in rounds for item in round_ if item is not None]

    def by_relation(self, relation: str) -> list[Item]:
        """The items of one relation (KnowlocError if it is not in the dataset)."""
        if relation not in self.relations:
            raise KnowlocError(f"relation {relation!r} not in dataset; available: {', '.join(self.relations)}")
        return [item for item in self.items if item[0].relation == relation]


# --------------------------------------------------------------------------------------------
# entry point


def load_facts(source: str, relations: Sequence[str] | None = None, limit: int | None = None) -> Dataset:
    """Load a fact set; see the module docstring for ``source`` and the JSONL format.

    ``relations``: keep only these relations (in the dataset's own order); ``limit``: at most this
    many facts per relation (the first ones in file order).
    """
    if not isinstance(source, str) or not source.strip():
        raise KnowlocError("empty fact-set source; use 'builtin', 'pararel:DIR' or a path to a .jsonl file")
    if relations is not None:
        if isinstance(relations, str):
            relations = [relations]
        relations = list(dict.fromkeys(relations))
        if not relations:
            raise KnowlocError("empty relation filter; pass None to keep all relations")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise KnowlocError(f"limit must be a positive integer or None, got {limit!r}")

    source = source.strip()
    if source == BUILTIN_SPEC:
        text = (resources.files("knowloc") / "resources" / BUILTIN_RESOURCE).read_text(encoding="utf-8")
        return _load_jsonl_text(text, BUILTIN_RESOURCE, relations, limit, source=source)
    if source.startswith(PARAREL_PREFIX):
        directory = source[len(PARAREL_PREFIX) :].strip()
        if not directory:
            raise KnowlocError("'pararel:' needs a directory, e.g. pararel:../shared/data/pararel")
        return _load_pararel(Path(directory).expanduser(), relations, limit, source=source)

    if source.startswith(COUNTERFACT_PREFIX):
        path = Path(source[len(COUNTERFACT_PREFIX):].strip()).expanduser()
        if not path.is_file():
            raise KnowlocError(f"counterfact file {str(path)!r} not found (counterfact:FILE, ROME's counterfact.json)")
        return _load_jsonl_text(_counterfact_lines(_read_text(path), str(path)), str(path), relations, limit,
                                source=source)

    path = Path(source).expanduser()
    if not path.exists():
        raise KnowlocError(f"fact set {source!r} not found: not 'builtin', 'pararel:DIR' or an existing file")
    if path.is_dir():
        return _load_pararel(path, relations, limit, source=source)
    return _load_jsonl_text(_read_text(path), str(path), relations, limit, source=source)


# --------------------------------------------------------------------------------------------
# helpers


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not content
    except UnicodeDecodeError as exc:
        raise KnowlocError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise KnowlocError(f"{path}: cannot read ({exc.strerror or exc})") from None


def json_lines(text: str, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line; KnowlocError on a bad line."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KnowlocError(f"{name}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:  # e.g. integers too long, nesting too deep
            raise KnowlocError(f"{name}:{lineno}: malformed JSON ({_one_line(str(exc))})") from None
        if not isinstance(obj, dict):
            raise KnowlocError(f"{name}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _require(obj: dict[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise KnowlocError(f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise KnowlocError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise KnowlocError(f"{where}: empty {key}")
    return value


def _warn_merged(merged: list[tuple[str, str]], name: str) -> None:
    """One warning line for the duplicate facts merged while loading `name`."""
    if not merged:
        return
    shown = ", ".join(f"{dropped!r} into {kept!r}" for dropped, kept in merged[:MERGED_SHOWN])
    more = f" (+{len(merged) - MERGED_SHOWN} more)" if len(merged) > MERGED_SHOWN else ""
    count = "1 duplicate fact" if len(merged) == 1 else f"{len(merged)} duplicate facts"
    log.warning(f"warning: {name}: {count} (same relation, subject and object as an earlier fact) merged, "
                f"keeping the first id: {shown}{more}")


def _relation_key(relation: str) -> tuple[Any, ...]:
    """Natural order: P17 < P36 < P101."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", relation))


def _select_relations(available: Sequence[str], relations: Sequence[str] | None, name: str) -> list[str]:
    if relations is None:
        return list(available)
    unknown = [r for r in relations if r not in available]
    if unknown:
        raise KnowlocError(
            f"unknown relation{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {name}; "
            f"available: {', '.join(available) or '(none)'}"
        )
    wanted = set(relations)
    return [r for r in available if r in wanted]


# --------------------------------------------------------------------------------------------
# our JSONL format


def _load_jsonl_text(
    text: str, name: str, relations: Sequence[str] | None, limit: int | None, source: str
) -> Dataset:
    parsed: list[tuple[Fact, list[Query]]] = []
    first_line_of_id: dict[str, int] = {}
    index_of_triple: dict[tuple[str, str, str], int] = {}
    merged: list[tuple[str, str]] = []
    for lineno, obj in json_lines(text, name):
        where = f"{name}:{lineno}"
        _require(obj, ("relation", "subject", "object", "templates"), where)
        relation = _string(obj, "relation", where)
        subject = _string(obj, "subject", where)
        obj_label = _string(obj, "object", where)
        fact_id = _string(obj, "id", where) if "id" in obj else f"{relation}:{lineno}"
        if fact_id in first_line_of_id:
            raise KnowlocError(f"{where}: duplicate fact id {fact_id!r} (first on line {first_line_of_id[fact_id]})")
        first_line_of_id[fact_id] = lineno
        templates = obj["templates"]
        if not isinstance(templates, list) or not templates:
            raise KnowlocError(f"{where}: 'templates' must be a non-empty list of strings")
        for template in templates:
            if not isinstance(template, str):
                raise KnowlocError(f"{where}: template must be a string, got {type(template).__name__}")
        fact = Fact(id=fact_id, relation=relation, subject=subject, object=obj_label)
        try:
            queries = queries_for(fact, templates)
        except KnowlocError as exc:
            raise KnowlocError(f"{where}: {exc}") from None
        triple = (relation, subject, obj_label)
        if triple in index_of_triple:  # the same fact again: studied once, under its first id
            k = index_of_triple[triple]
            first, first_queries = parsed[k]
            parsed[k] = (first, queries_for(first, [q.template for q in first_queries] + templates))
            merged.append((fact_id, first.id))
            continue
        index_of_triple[triple] = len(parsed)
        parsed.append((fact, queries))
    if not parsed:
        raise KnowlocError(f"{name}: no facts")

    available = list(dict.fromkeys(fact.relation for fact, _ in parsed))
    selected = _select_relations(available, relations, name)
    items: list[Item] = []
    templates_of: dict[str, list[str]] = {}
    for relation in selected:
        group = [item for item in parsed if item[0].relation == relation]
        if limit is not None:
            group = group[:limit]
        items.extend(group)
        templates_of[relation] = list(dict.fromkeys(q.template for _, qs in group for q in qs))
    kept = {fact.id for fact, _ in items}
    merged = [(dropped, first) for dropped, first in merged if first in kept]
    _warn_merged(merged, name)
    return Dataset(items=items, relations=selected, templates=templates_of, source=source, merged=merged)


# --------------------------------------------------------------------------------------------
# CounterFact


def _counterfact_lines(text: str, name: str) -> str:
    """A CounterFact JSON list as our JSONL text, one fact line per record (module docstring)."""
    try:
        records = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise KnowlocError(f"{name}: malformed JSON ({_one_line(str(exc))})") from None
    if not isinstance(records, list) or not records:
        raise KnowlocError(f"{name}: expected a non-empty JSON list of CounterFact records")
    lines = []
    for k, record in enumerate(records, start=1):
        where = f"{name}: record {k}"
        if not isinstance(record, dict):
            raise KnowlocError(f"{where}: expected a JSON object, got {type(record).__name__}")
        _require(record, ("case_id", "requested_rewrite"), where)
        rewrite = record["requested_rewrite"]
        if not isinstance(rewrite, dict):
            raise KnowlocError(f"{where}: 'requested_rewrite' must be an object")
        _require(rewrite, ("prompt", "relation_id", "subject", "target_true"), where)
        prompt, subject = _string(rewrite, "prompt", where), _string(rewrite, "subject", where)
        true = rewrite["target_true"]
        if not isinstance(true, dict) or "str" not in true:
            raise KnowlocError(f"{where}: 'target_true' must be an object with 'str'")
        if prompt.count("{}") != 1:
            raise KnowlocError(f"{where}: the rewrite prompt must hold '{{}}' once (the subject), got {prompt!r}")
        templates = [prompt.replace("{}", "[X]") + " [Y]."]
        paraphrases = record.get("paraphrase_prompts", [])
        if not isinstance(paraphrases, list):
            raise KnowlocError(f"{where}: 'paraphrase_prompts' must be a list of strings")
        for text_ in paraphrases:
            if not isinstance(text_, str) or subject not in text_:
                raise KnowlocError(f"{where}: a paraphrase prompt must be a string holding the subject "
                                   f"{subject!r}, got {_one_line(repr(text_))}")
            at = text_.rfind(subject)
            templates.append(text_[:at] + "[X]" + text_[at + len(subject):].rstrip() + " [Y].")
        lines.append(json.dumps({"id": f"cf:{record['case_id']}", "relation": _string(rewrite, "relation_id", where),
                                 "subject": subject, "object": _string(true, "str", where),
                                 "templates": templates}, ensure_ascii=False))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# ParaRel


def _pararel_templates(path: Path) -> list[str]:
    """The causal templates of one ParaRel patterns file, one per distinct prompt."""
    kept: list[str] = []
    heads: set[str] = set()
    for lineno, obj in json_lines(_read_text(path), str(path)):
        where = f"{path}:{lineno}"
        _require(obj, ("pattern",), where)
        template = obj["pattern"]
        if not isinstance(template, str):
            raise KnowlocError(f"{where}: 'pattern' must be a string, got {type(template).__name__}")
        missing = [m for m in (X_MARK, Y_MARK) if m not in template]
        if missing:
            raise KnowlocError(f"{where}: template {_one_line(template)!r} lacks {' and '.join(missing)}")
        if not is_causal_template(template):
            continue
        head = template[: template.index(Y_MARK)].rstrip()
        if head not in heads:
            heads.add(head)
            kept.append(template)
    return kept


def _load_pararel(directory: Path, relations: Sequence[str] | None, limit: int | None, source: str) -> Dataset:
    if not directory.exists():
        raise KnowlocError(f"ParaRel directory {directory} not found")
    if not directory.is_dir():
        raise KnowlocError(f"ParaRel path {directory} is not a directory")
    patterns_dir, facts_dir = directory / "patterns", directory / "facts"
    missing = [d.name + "/" for d in (patterns_dir, facts_dir) if not d.is_dir()]
    if missing:
        raise KnowlocError(f"{directory}: not a ParaRel directory (missing {' and '.join(missing)})")
    pattern_files = {p.stem: p for p in patterns_dir.glob("*.jsonl") if p.is_file()}
    fact_files = {p.stem: p for p in facts_dir.glob("*.jsonl") if p.is_file()}
    both = sorted(set(pattern_files) & set(fact_files), key=_relation_key)
    if not both:
        raise KnowlocError(f"{directory}: no relation has both patterns/<rel>.jsonl and facts/<rel>.jsonl")

    templates_of = {rel: _pararel_templates(pattern_files[rel]) for rel in both}
    available = [rel for rel in both if templates_of[rel]]
    if relations is not None:
        noncausal = [r for r in relations if r in templates_of and not templates_of[r]]
        if noncausal:
            raise KnowlocError(
                f"relation {noncausal[0]!r} in {directory} has no template with [Y] at the end; "
                f"available: {', '.join(available)}"
            )
    selected = _select_relations(available, relations, str(directory))

    items: list[Item] = []
    merged: list[tuple[str, str]] = []
    for relation in selected:
        path = fact_files[relation]
        count = 0
        first_id: dict[tuple[str, str], str] = {}
        for lineno, obj in json_lines(_read_text(path), str(path)):
            if limit is not None and count >= limit:
                break
            where = f"{path}:{lineno}"
            _require(obj, ("sub_label", "obj_label"), where)
            subject = _string(obj, "sub_label", where)
            obj_label = _string(obj, "obj_label", where)
            uuid = obj.get("uuid")
            suffix = str(uuid).strip() if uuid is not None and str(uuid).strip() else str(lineno)
            fact = Fact(id=f"{relation}:{suffix}", relation=relation, subject=subject, object=obj_label)
            if (subject, obj_label) in first_id:  # the same fact again (ParaRel has a few): studied once
                merged.append((fact.id, first_id[(subject, obj_label)]))
                continue
            first_id[(subject, obj_label)] = fact.id
            items.append((fact, queries_for(fact, templates_of[relation])))
            count += 1
    _warn_merged(merged, str(directory))
    return Dataset(
        items=items,
        relations=selected,
        templates={rel: templates_of[rel] for rel in selected},
        source=source,
        merged=merged,
    )
