"""``vnix user ...``: users, roles and quotas (admins), via the manager."""
from __future__ import annotations

import typer

from vnix.cli.client import ApiClient, mib, print_json, print_table
from vnix.cli.main import app

user_app = typer.Typer(help="Users, roles and quotas (through the manager).",
                       no_args_is_help=True)
app.add_typer(user_app, name="user")
JSON = typer.Option(False, "--json", help="Print JSON.")


@user_app.command("list")
def list_users(as_json: bool = JSON) -> None:
    """Users, roles, quotas and what they use."""
    users = ApiClient().get("/users")
    if as_json:
        return print_json(users)
    for u in users:
        us = u["usage"]
        u["vms"] = f"{us['vms']}/{u['max_vms'] if u['max_vms'] is not None else '∞'}"
        u["cpus"] = f"{us['cpus']}/{u['max_cpus'] if u['max_cpus'] is not None else '∞'}"
        u["mem"] = f"{mib(us['memory_mib'])}/{mib(u['max_memory_mib']) if u['max_memory_mib'] is not None else '∞'}"
    print_table(users, [("name", "NAME"), ("role", "ROLE"), ("vms", "VMS"),
                        ("cpus", "VCPUS"), ("mem", "MEMORY")], "no users")


@user_app.command("create")
def create(
    name: str,
    role: str = typer.Option("user", help="admin, user or guest"),
    password: str = typer.Option(None, envvar="VNIX_NEW_PASSWORD",
                                 help="asked for when not given"),
    max_vms: int = typer.Option(None, min=0),
    max_cpus: int = typer.Option(None, min=0),
    max_memory: str = typer.Option(None, help="e.g. 8G"),
) -> None:
    """Create a user (admins)."""
    if password is None:
        password = typer.prompt(f"password for {name}", hide_input=True,
                                confirmation_prompt=True)
    u = ApiClient().post("/users", {"name": name, "password": password, "role": role,
                                    "max_vms": max_vms, "max_cpus": max_cpus,
                                    "max_memory": max_memory})
    print(f"user {u['name']} created ({u['role']})")


@user_app.command("delete")
def delete(name: str) -> None:
    """Delete a user who owns no VMs (admins)."""
    ApiClient().request("DELETE", f"/users/{name}")
    print(f"user {name} deleted")


@user_app.command("quota")
def quota(
    name: str,
    max_vms: int = typer.Option(None, min=0),
    max_cpus: int = typer.Option(None, min=0),
    max_memory: str = typer.Option(None, help="e.g. 8G"),
    clear: bool = typer.Option(False, "--clear", help="remove the limits not given"),
    as_json: bool = JSON,
) -> None:
    """Show or set a user's quota (setting: admins)."""
    client = ApiClient()
    if max_vms is None and max_cpus is None and max_memory is None and not clear:
        u = client.get(f"/users/{name}")
    else:
        u = client.request("PUT", f"/users/{name}/quota", {
            "max_vms": max_vms, "max_cpus": max_cpus, "max_memory": max_memory,
            "clear": clear})
    if as_json:
        return print_json(u)
    us = u["usage"]
    for what, used, limit in (("VMs", us["vms"], u["max_vms"]),
                              ("vCPUs", us["cpus"], u["max_cpus"]),
                              ("memory", mib(us["memory_mib"]), mib(u["max_memory_mib"]))):
        print(f"{what:<7} {used} of {limit if limit not in (None, '-') else 'no limit'}")
