"""``vnix node ...`` (hosts) and ``vnix image list`` (images on the hosts), via the manager."""
from __future__ import annotations

import typer

from vnix.cli.client import ApiClient, mib, print_json, print_table
from vnix.cli.image import image_app
from vnix.cli.main import app

node_app = typer.Typer(help="Hosts running a node agent (through the manager).",
                       no_args_is_help=True)
app.add_typer(node_app, name="node")
JSON = typer.Option(False, "--json", help="Print JSON.")


@node_app.command("list")
def list_nodes(as_json: bool = JSON) -> None:
    """Hosts, their state and load."""
    hosts = ApiClient().get("/hosts")
    if as_json:
        return print_json(hosts)
    for h in hosts:
        h["cpu"] = f"{h['used_cpus']}/{h['cpus']}"
        h["mem"] = f"{mib(h['used_memory_mib'])}/{mib(h['memory_mib'])}"
    print_table(hosts, [("name", "NAME"), ("state", "STATE"), ("url", "URL"),
                        ("vms", "VMS"), ("cpu", "VCPUS/CPUS"), ("mem", "VM MEM/MEM"),
                        ("cpu_percent", "CPU%"), ("drivers", "DRIVERS")], "no hosts")


@node_app.command("show")
def show(name: str, as_json: bool = JSON) -> None:
    """One host in detail."""
    h = ApiClient().get(f"/hosts/{name}")
    if as_json:
        return print_json(h)
    for key, value in h.items():
        print(f"{key:<21} {value if value not in (None, '', []) else '-'}")


@node_app.command("add")
def add(name: str, url: str, token: str = typer.Option(..., envvar="VNIX_AGENT_TOKEN",
                                                       help="the agent's bearer token")) -> None:
    """Register a host whose agent runs at URL (admins)."""
    h = ApiClient().post("/hosts", {"name": name, "url": url, "token": token})
    print(f"host {h['name']} registered: {h['cpus']} CPUs, {mib(h['memory_mib'])}")


@node_app.command("remove")
def remove(name: str) -> None:
    """Forget a host that holds no VMs (admins)."""
    ApiClient().request("DELETE", f"/hosts/{name}")
    print(f"host {name} removed")


@node_app.command("join-token")
def join_token() -> None:
    """Make a new join token for `vnix agent --join` (the old one stops working)."""
    print(ApiClient().post("/hosts/join-token")["token"])


@image_app.command("list")
def list_images(as_json: bool = JSON) -> None:
    """Images on the manager's hosts (`vnix image show` reads the local build instead)."""
    images = ApiClient().get("/images")
    if as_json:
        return print_json(images)
    for i in images:
        i["mb"] = f"{i['size'] / 2**20:.1f}M"
    print_table(images, [("name", "NAME"), ("kind", "KIND"), ("mb", "SIZE"),
                         ("hosts", "HOSTS")], "no images")


@image_app.command("import")
def import_image(name: str = typer.Argument("tiny"),
                 kernel: str = typer.Option(None, help="a kernel file on the hosts"),
                 initrd: str = typer.Option(None, help="an initrd file on the hosts"),
                 disk: str = typer.Option(None, help="a raw or qcow2 disk file on the hosts"),
                 cmdline: str = typer.Option("", help="the kernel command line"),
                 host: str = typer.Option(None, help="one host (default: every host up)"),
                 as_json: bool = JSON) -> None:
    """Import an image on the hosts (admins): by default the tiny guest `vnix image build
    tiny` made; or files already on the hosts (--kernel/--initrd/--disk)."""
    client = ApiClient()
    image = ({"name": name, "kernel": kernel, "initrd": initrd, "path": disk,
              "cmdline": cmdline} if kernel or disk else {"name": name, "tiny": True})
    job = client.post("/images", {"image": image, "host": host})
    job = client.wait_jobs([job], f"import {name}", show=not as_json)[0]
    if as_json:
        return print_json(job)
    print(f"image {name} on {', '.join(job['result']['hosts'])}")
