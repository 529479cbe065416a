"""Cluster XML: the shipped schema, safe parsing, line-numbered errors, export/import round trips."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnix.cluster.vcluster import (
    MAX_BYTES,
    ClusterSpec,
    ClusterXmlError,
    Group,
    Network,
    Placement,
    Profile,
    export_cluster,
    parse_cluster,
    schema_text,
)
from vnix.errors import UsageError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hpc-cluster.xml"

GOOD = b"""<?xml version="1.0"?>
<cluster name="lab">
  <description>two groups</description>
  <network name="net0" subnet="198.18.10.0/24"/>
  <network name="net1" subnet="198.18.11.0/24" dhcp="false"/>
  <profile name="small" cpus="2" memory="512M" driver="qemu" accel="tcg" vnc="false">
    <cmdline>console=ttyS0 quiet</cmdline>
  </profile>
  <group name="head" count="1" image="tiny" network="net0" memory="1G"/>
  <group name="work" count="3" image="tiny" profile="small" network="net1">
    <placement policy="anti-affinity"><host>h1</host><host>h2</host><host>h3</host></placement>
  </group>
</cluster>
"""


def problems(data: bytes | str, **kw: object) -> list[str]:
    with pytest.raises(ClusterXmlError) as exc:
        parse_cluster(data, "cluster.xml", **kw)  # type: ignore[arg-type]
    assert isinstance(exc.value, UsageError) and exc.value.exit_code == 2
    return exc.value.lines()


def test_good_file_becomes_the_model() -> None:
    spec = parse_cluster(GOOD)
    assert spec.name == "lab" and spec.node_count == 4
    assert [n.name for n in spec.networks] == ["net0", "net1"]
    assert spec.network("net1").dhcp is False
    work = spec.group("work")
    assert work.placement == Placement(policy="anti-affinity", hosts=["h1", "h2", "h3"])
    assert [n for _, n in spec.node_names()] == ["lab-head-0", "lab-work-0", "lab-work-1",
                                                 "lab-work-2"]
    # group over profile over defaults
    head, w = spec.resolve(spec.group("head")), spec.resolve(work)
    assert (head.cpus, head.memory_mib, head.driver, head.vnc) == (1, 1024, None, True)
    assert (w.cpus, w.memory_mib, w.driver, w.accel, w.vnc) == (2, 512, "qemu", "tcg", False)
    assert w.cmdline == "console=ttyS0 quiet" and w.network == "net1"


def test_example_file_is_valid() -> None:
    spec = parse_cluster(EXAMPLE.read_bytes(), EXAMPLE.name)
    assert spec.node_count == 4 and spec.name == "hpc"


def test_missing_attribute_names_the_line() -> None:
    xml = GOOD.replace(b'<group name="head" count="1"', b'<group name="head"')
    assert problems(xml) == ["cluster.xml:9: element 'group': missing required attribute "
                             "'count'"]


def test_every_schema_problem_is_reported_with_its_line() -> None:
    xml = b"""<cluster name="lab">
  <network name="n" subnet="198.18.0.0/24"/>
  <network name="n" subnet="198.18.1.0/24"/>
  <group name="a" count="x" image="tiny" memory="12Q"/>
  <group name="b" count="1" image="tiny"><placement policy="pack"/></group>
  <bogus/>
</cluster>"""
    lines = problems(xml)
    assert lines[0] == "cluster.xml:3: element 'network': a network with this name is " \
                       "already defined"
    assert "cluster.xml:4: element 'group': attribute count='x': not a whole number" in lines
    assert any(line.startswith("cluster.xml:4:") and "memory='12Q'" in line for line in lines)
    assert any(line.startswith("cluster.xml:5:") and "policy='pack'" in line for line in lines)
    assert lines[-1] == "cluster.xml:6: element 'bogus' is not expected inside 'cluster' here"


@pytest.mark.parametrize("change, line, text", [
    ((b'network="net0" memory', b'network="nope" memory'), 9, "unknown network 'nope'"),
    ((b'198.18.11.0/24', b'198.18.10.128/25'), 5, "overlaps network 'net0'"),
    ((b'198.18.11.0/24', b'198.18.11.1/24'), 5, "host bits set"),
    ((b'198.18.11.0/24', b'198.18.11.0/30'), 5, "too small"),
    ((b'memory="1G"', b'memory="100K"'), 9, "not a whole number of MiB"),
    ((b'count="3" image="tiny"', b'count="3" image="tiny" source="snapshot"'), 10,
     "needs a 'snapshot' attribute"),
    ((b'<host>h2</host>', b'<host>h1</host>'), 11, "listed twice"),
    ((b'count="3"', b'count="257"'), 10, "257"),
])
def test_rules_beyond_the_schema_carry_lines(change: tuple[bytes, bytes], line: int,
                                             text: str) -> None:
    lines = problems(GOOD.replace(*change))
    assert len(lines) == 1 and lines[0].startswith(f"cluster.xml:{line}:") and text in lines[0]


def test_profile_must_exist_when_saved_profiles_are_known() -> None:
    xml = GOOD.replace(b'profile="small" network', b'profile="big" network')
    assert parse_cluster(xml).group("work").profile == "big"  # resolved later, on the manager
    assert parse_cluster(xml, saved_profiles={"big"}).group("work").profile == "big"
    assert problems(xml, saved_profiles={"other"}) == [
        "cluster.xml:10: group 'work': unknown profile 'big' (neither in the file nor saved)"]


@pytest.mark.parametrize("xml, text", [
    (b"", "file is empty"),
    (b"<cluster name='a'>", "not well-formed XML"),
    (b"<cluster name='a'></cluster>", "missing child element(s) group"),
    (b"<vm name='a'/>", "vm"),
    ("<cluster name='\u00e9'><group name='a' count='1' image='t'/></cluster>", "name="),
])
def test_malformed_files_give_one_line_errors(xml: bytes | str, text: str) -> None:
    lines = problems(xml)
    assert lines and all("\n" not in line and "Traceback" not in line for line in lines)
    assert text in " ".join(lines)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE cluster [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<cluster name="a"><description>&lol9;</description>
<group name="g" count="1" image="tiny"/></cluster>
"""


def test_billion_laughs_is_refused_quickly() -> None:
    t0 = time.monotonic()
    lines = problems(BILLION_LAUGHS)
    assert time.monotonic() - t0 < 2.0
    assert len(lines) == 1 and ("DOCTYPE" in lines[0] or "entit" in lines[0].lower())


def test_external_entity_file_is_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xml = (f'<?xml version="1.0"?>\n<!DOCTYPE cluster [<!ENTITY x SYSTEM "file://{secret}">]>\n'
           '<cluster name="a"><description>&x;</description>'
           '<group name="g" count="1" image="tiny"/></cluster>').encode()
    lines = problems(xml)
    assert "TOPSECRET" not in " ".join(lines)
    assert "DOCTYPE" in lines[0] or "entit" in lines[0].lower()


def test_external_dtd_and_network_are_refused() -> None:
    xml = (b'<?xml version="1.0"?>\n<!DOCTYPE cluster SYSTEM "http://198.18.0.1/x.dtd">\n'
           b'<cluster name="a"><group name="g" count="1" image="tiny"/></cluster>')
    line = problems(xml)[0]
    assert line.startswith("cluster.xml:2:") and "not allowed" in line


def test_size_and_depth_limits() -> None:
    big = GOOD.replace(b"two groups", b"x" * MAX_BYTES)
    assert "at most 1048576" in problems(big)[0]
    deep = b"<cluster name='a'>" + b"<x>" * 20 + b"</x>" * 20 + b"</cluster>"
    assert "nested deeper" in problems(deep)[0]


def test_export_then_import_is_the_same_cluster() -> None:
    spec = parse_cluster(GOOD)
    again = parse_cluster(export_cluster(spec))
    assert again == spec
    assert export_cluster(again) == export_cluster(spec)
    # memory is semantic: 1G and 1024M are the same cluster
    assert parse_cluster(GOOD.replace(b'memory="1G"', b'memory="1024M"')) == spec


def test_export_is_valid_against_the_shipped_schema() -> None:
    import xmlschema

    spec = parse_cluster(EXAMPLE.read_bytes())
    assert xmlschema.XMLSchema10(schema_text()).is_valid(export_cluster(spec).decode())
    assert "<xs:schema" in schema_text()


names = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)


@st.composite
def clusters(draw: st.DrawFn) -> ClusterSpec:
    nets = [Network(name=n, subnet=f"198.18.{i}.0/24", dhcp=draw(st.booleans()))
            for i, n in enumerate(draw(st.lists(names, max_size=3, unique=True)))]
    profs = [Profile(name=n, cpus=draw(st.none() | st.integers(1, 8)),
                     memory_mib=draw(st.none() | st.sampled_from([64, 128, 1024, 1500])),
                     driver=draw(st.none() | st.sampled_from(["qemu", "native", "fake"])),
                     accel=draw(st.none() | st.sampled_from(["auto", "tcg"])),
                     vnc=draw(st.none() | st.booleans()),
                     cmdline=draw(st.none() | st.from_regex(r"[a-z=0-9 ]{1,20}", fullmatch=True)))
             for n in draw(st.lists(names, max_size=2, unique=True))]
    groups = []
    for g in draw(st.lists(names, min_size=1, max_size=4, unique=True)):
        snap = draw(st.booleans())
        groups.append(Group(
            name=g, count=draw(st.integers(0, 8)), image=draw(names),
            source="snapshot" if snap else "image", snapshot=draw(names) if snap else None,
            cpus=draw(st.none() | st.integers(1, 4)),
            memory_mib=draw(st.none() | st.sampled_from([128, 2048])),
            network=draw(st.none() | st.sampled_from([n.name for n in nets])) if nets else None,
            profile=draw(st.none() | st.sampled_from([p.name for p in profs])) if profs else None,
            placement=Placement(policy=draw(st.sampled_from(["any", "spread", "anti-affinity"])),
                                hosts=draw(st.lists(names, max_size=3, unique=True)))))
    return ClusterSpec(name=draw(names), description=draw(st.none() | st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30)),
        networks=nets, profiles=profs, groups=groups)


@settings(max_examples=60, deadline=None)
@given(clusters())
def test_import_of_export_gives_the_same_cluster(spec: ClusterSpec) -> None:
    assert parse_cluster(export_cluster(spec)) == spec
