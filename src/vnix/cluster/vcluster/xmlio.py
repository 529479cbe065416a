"""Reading and writing cluster XML, safely.

Reading (:func:`parse_cluster`), in order, each step refusing with line numbers:

1. size: at most :data:`MAX_BYTES` (1 MiB) — checked before any parsing;
2. lxml with ``resolve_entities=False, no_network=True, load_dtd=False`` and libxml2's own
   limits on (``huge_tree=False``): no entity is ever expanded, no file or URL is ever read;
3. any DOCTYPE is refused outright (a cluster file needs none; this is where billion-laughs and
   external-entity files stop), as are elements nested deeper than :data:`MAX_DEPTH`;
4. the shipped XSD (``schema/cluster.xsd``, checked with xmlschema);
5. the rules a schema cannot state (references, overlapping subnets), from
   :meth:`ClusterSpec.semantic_problems`, mapped back to the element's line.

Every problem becomes one line ``<file>:<line>: <message>`` in :class:`ClusterXmlError`
(a UsageError: exit status 2 on the CLI, 400 on the API with ``problems``).

Writing (:func:`export_cluster`) gives XML that parses back to an equal :class:`ClusterSpec`.
"""
from __future__ import annotations

import functools
from collections.abc import Collection
from importlib import resources
from typing import Any

import xmlschema
from lxml import etree
from pydantic import ValidationError

from vnix.cluster.errors import BadRequest
from vnix.cluster.vcluster.model import ClusterSpec, Group, Network, Placement, Profile

MAX_BYTES = 1 << 20
MAX_DEPTH = 8
SCHEMA_FILE = "cluster.xsd"


class ClusterXmlError(BadRequest):
    """A cluster file that cannot be used; ``problems`` holds (line, message) pairs."""

    def __init__(self, filename: str, problems: list[tuple[int | None, str]]) -> None:
        self.filename = filename
        self.problems = sorted(problems, key=lambda p: (p[0] or 0))
        super().__init__("; ".join(self.lines()) if len(self.problems) > 1
                         else self.lines()[0])

    def lines(self) -> list[str]:
        return [f"{self.filename}:{line}: {msg}" if line else f"{self.filename}: {msg}"
                for line, msg in self.problems]


@functools.cache
def schema() -> xmlschema.XMLSchema10:
    """The shipped schema (parsed once)."""
    xsd = resources.files("vnix.cluster.vcluster") / "schema" / SCHEMA_FILE
    with resources.as_file(xsd) as path:
        return xmlschema.XMLSchema10(str(path))


def schema_text() -> str:
    return (resources.files("vnix.cluster.vcluster") / "schema" / SCHEMA_FILE).read_text()


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True, collect_ids=False)


def parse_tree(data: bytes | str, filename: str = "cluster.xml") -> etree._ElementTree:
    """Steps 1-3: a parsed tree with no DTD, entities or deep nesting."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_BYTES:
        raise ClusterXmlError(filename, [(None, f"file is {len(raw)} bytes; at most "
                                                f"{MAX_BYTES} (1 MiB)")])
    if not raw.strip():
        raise ClusterXmlError(filename, [(None, "file is empty")])
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        line = exc.lineno or (exc.position[0] if exc.position else None)
        msg = str(exc.msg or exc).split(", line ")[0]
        if "Entity" in msg or "entity" in msg:
            msg += " (entities are not allowed)"
        raise ClusterXmlError(filename, [(line, f"not well-formed XML: {msg}")]) from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise ClusterXmlError(filename, [(1, "DOCTYPE declarations are not allowed (no DTDs, "
                                             "no entities)")])
    for el in root.iter():
        if not isinstance(el.tag, str):  # entity references left unexpanded
            raise ClusterXmlError(filename, [(el.sourceline, "entity references are not "
                                                             "allowed")])
        depth = sum(1 for _ in el.iterancestors())
        if depth >= MAX_DEPTH:
            raise ClusterXmlError(filename, [(el.sourceline, f"elements nested deeper than "
                                                             f"{MAX_DEPTH} levels")])
    return tree


def _xsd_problems(tree: etree._ElementTree) -> list[tuple[int | None, str]]:
    out: list[tuple[int | None, str]] = []
    for err in schema().iter_errors(tree):
        elem = err.elem
        line = getattr(elem, "sourceline", None)
        index = getattr(err, "index", None)
        if isinstance(err, xmlschema.XMLSchemaChildrenValidationError) and elem is not None \
                and index is not None and index < len(elem):
            child = elem[index]  # point at the unexpected child, not its parent
            out.append((child.sourceline, f"element {_local(child.tag)!r} is not expected "
                                          f"inside {_local(elem.tag)!r} here"))
            continue
        if isinstance(err, xmlschema.XMLSchemaChildrenValidationError) and elem is not None:
            expected = ", ".join(sorted({_local(str(getattr(e, "name", e)))
                                         for e in (err.expected or [])}))
            out.append((line, f"element {_local(elem.tag)!r}: missing child "
                              f"element(s) {expected or err.reason}"))
            continue
        reason = (err.reason or str(err)).rstrip(".")
        what = f"element {_local(elem.tag)!r}: " if elem is not None else ""
        out.append((line, what + _friendly(reason)))
    return out


def _friendly(reason: str) -> str:
    for key in ("XsdUnique(name='uniqueNetwork')", "XsdUnique(name='uniqueGroup')",
                "XsdUnique(name='uniqueProfile')"):
        if key in reason:
            kind = key.split("'unique")[1].rstrip("')").lower()
            return f"a {kind} with this name is already defined"
    if "invalid literal for int()" in reason:
        return reason.split(":")[0] + ": not a whole number"
    if "doesn't match any pattern" in reason:
        attr = reason.split(":")[0]
        hint = {"memory": "a size like 256M or 1G", "subnet": "an IPv4 network like "
                "198.18.64.0/24"}.get(attr.split("=")[0].removeprefix("attribute "),
                                         "a lower-case name (a-z, 0-9, '-')")
        return f"{attr}: not {hint}"
    return reason


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _bool(text: str | None) -> bool | None:
    return None if text is None else text.strip() in ("true", "1")


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)


def _mib(el: etree._Element, filename: str) -> int | None:
    text = el.get("memory")
    if text is None:
        return None
    from vnix.errors import VnixError
    from vnix.vmm.config import parse_size_mib

    try:
        return parse_size_mib(text)
    except VnixError as exc:
        raise ClusterXmlError(filename, [(el.sourceline, f"element {_local(el.tag)!r}: "
                                                         f"{exc}")]) from None


def parse_cluster(data: bytes | str, filename: str = "cluster.xml",
                  saved_profiles: Collection[str] | None = None) -> ClusterSpec:
    """Read, check and type a cluster file. With ``saved_profiles`` (names of the profiles
    saved on the manager) a group's profile must be inline or saved."""
    tree = parse_tree(data, filename)
    problems = _xsd_problems(tree)
    if problems:
        raise ClusterXmlError(filename, problems)
    root = tree.getroot()
    lines: dict[str, int | None] = {"cluster": root.sourceline}
    networks: list[Network] = []
    profiles: list[Profile] = []
    groups: list[Group] = []
    for i, el in enumerate(root.findall("network"), 1):
        lines[f"network[{i}]"] = el.sourceline
        networks.append(_network(el, filename))
    for i, el in enumerate(root.findall("profile"), 1):
        lines[f"profile[{i}]"] = el.sourceline
        cmd = el.find("cmdline")
        profiles.append(_checked(el, filename, Profile, dict(
            name=el.get("name"), cpus=_int(el.get("cpus")), memory_mib=_mib(el, filename),
            driver=el.get("driver"), accel=el.get("accel"), vnc=_bool(el.get("vnc")),
            cmdline=(cmd.text or "") if cmd is not None else None)))
    for i, el in enumerate(root.findall("group"), 1):
        lines[f"group[{i}]"] = el.sourceline
        pl = el.find("placement")
        placement = Placement() if pl is None else _checked(pl, filename, Placement, dict(
            policy=pl.get("policy", "any"), hosts=[(h.text or "").strip()
                                                   for h in pl.findall("host")]))
        groups.append(_checked(el, filename, Group, dict(
            name=el.get("name"), count=_int(el.get("count")), image=el.get("image"),
            source=el.get("source", "image"), snapshot=el.get("snapshot"),
            cpus=_int(el.get("cpus")), memory_mib=_mib(el, filename),
            driver=el.get("driver"), network=el.get("network"),
            profile=el.get("profile"), placement=placement)))
    desc = root.find("description")
    spec = _checked(root, filename, ClusterSpec, dict(
        name=root.get("name"), description=desc.text if desc is not None else None,
        networks=networks, profiles=profiles, groups=groups))
    found = spec.semantic_problems()
    if saved_profiles is not None:
        inline = {p.name for p in spec.profiles}
        for i, g in enumerate(spec.groups, 1):
            if g.profile and g.profile not in inline and g.profile not in saved_profiles:
                found.append((f"group[{i}]", f"group {g.name!r}: unknown profile "
                                             f"{g.profile!r} (neither in the file nor saved)"))
    if found:
        raise ClusterXmlError(filename, [(lines.get(where), msg) for where, msg in found])
    return spec


def _network(el: etree._Element, filename: str) -> Network:
    return _checked(el, filename, Network, dict(
        name=el.get("name"), subnet=el.get("subnet"),
        dhcp=_bool(el.get("dhcp")) if el.get("dhcp") is not None else True))


def _checked(el: etree._Element, filename: str, model: type[Any], fields: dict[str, Any]) -> Any:
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise ClusterXmlError(filename, [(el.sourceline, f"element {_local(el.tag)!r}: "
                                                         f"{where + ': ' if where else ''}{msg}")]
                              ) from None


# -- export ---------------------------------------------------------------------------------
def _mem(mib: int) -> str:
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def _set(el: etree._Element, **attrs: object) -> None:
    for k, v in attrs.items():
        if v is None:
            continue
        el.set(k.rstrip("_"), ("true" if v else "false") if isinstance(v, bool) else str(v))


def export_cluster(spec: ClusterSpec) -> bytes:
    """The cluster as XML (UTF-8, indented) that :func:`parse_cluster` reads back equal."""
    root = etree.Element("cluster")
    _set(root, name=spec.name, version=1)
    if spec.description is not None:
        etree.SubElement(root, "description").text = spec.description
    for n in spec.networks:
        _set(etree.SubElement(root, "network"), name=n.name, subnet=n.subnet, dhcp=n.dhcp)
    for p in spec.profiles:
        el = etree.SubElement(root, "profile")
        _set(el, name=p.name, cpus=p.cpus,
             memory=_mem(p.memory_mib) if p.memory_mib is not None else None,
             driver=p.driver, accel=p.accel, vnc=p.vnc)
        if p.cmdline is not None:
            etree.SubElement(el, "cmdline").text = p.cmdline
    for g in spec.groups:
        el = etree.SubElement(root, "group")
        _set(el, name=g.name, count=g.count, image=g.image,
             source=g.source if g.source != "image" else None, snapshot=g.snapshot,
             cpus=g.cpus, memory=_mem(g.memory_mib) if g.memory_mib is not None else None,
             driver=g.driver, network=g.network, profile=g.profile)
        if g.placement != Placement():
            pl = etree.SubElement(el, "placement")
            _set(pl, policy=g.placement.policy)
            for h in g.placement.hosts:
                etree.SubElement(pl, "host").text = h
    etree.indent(root, space="  ")
    out: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return out
