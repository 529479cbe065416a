"""Virtual clusters: the XML description (``schema/cluster.xsd``), its typed model, and the
cluster operations (create, delete, import, export, scale, batch actions, move, profiles).

Public surface::

    ClusterSpec, Group, Network, Placement, Profile, NodeConfig   the model (model.py)
    parse_cluster(data, filename) -> ClusterSpec                 safe reading (xmlio.py)
    export_cluster(spec) -> bytes                                writing
    ClusterXmlError                                              a bad file, with line numbers
"""
from __future__ import annotations

from vnix.cluster.vcluster.model import (
    ClusterSpec,
    Group,
    Network,
    NodeConfig,
    Placement,
    Profile,
    node_name,
)
from vnix.cluster.vcluster.xmlio import (
    MAX_BYTES,
    ClusterXmlError,
    export_cluster,
    parse_cluster,
    schema_text,
)

__all__ = [
    "MAX_BYTES", "ClusterSpec", "ClusterXmlError", "Group", "Network", "NodeConfig",
    "Placement", "Profile", "export_cluster", "node_name", "parse_cluster", "schema_text",
]
