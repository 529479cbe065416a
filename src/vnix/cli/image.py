"""``vnix image``: build and inspect guest images."""
from __future__ import annotations

import json

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from vnix.cli.main import app, err_console
from vnix.images import UnknownImageError
from vnix.images.store import KNOWN_IMAGES, image_dir, load_image

image_app = typer.Typer(help="Build and inspect guest images.", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("build")
def build(
    name: str = typer.Argument(..., help="Image to build: tiny (x86_64) or tiny-arm64 (aarch64)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the inputs are unchanged."),
) -> None:
    """Build an image (Debian kernel + busybox, unpacked, not installed); cached until inputs change."""
    if name not in KNOWN_IMAGES:
        raise UnknownImageError(f"unknown image {name!r} (known: {', '.join(KNOWN_IMAGES)})")
    from vnix.images.arches import IMAGES
    from vnix.images.tiny import STEPS, build_tiny

    with Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        task = progress.add_task(f"image {name}", total=len(STEPS))

        def on_step(step: str) -> None:
            progress.update(task, description=f"image {name}: {step}",
                            completed=STEPS.index(step))

        result = build_tiny(force=force, on_step=on_step, arch=IMAGES[name].name)
        progress.update(task, completed=len(STEPS))
    if result.up_to_date:
        print(f"image {name} is up to date ({result.directory}, checked in {result.seconds:.2f} s)")
    else:
        inputs = result.manifest.get("inputs", {})
        kernel = inputs.get("kernel", ["?", "?"]) if isinstance(inputs, dict) else ["?", "?"]
        print(f"built image {name} in {result.seconds:.1f} s: {result.directory} "
              f"(kernel {kernel[0]} {kernel[1]})")


@image_app.command("show")
def show(
    name: str = typer.Argument(..., help="Image name."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Print where an image's files are and what it was built from."""
    image = load_image(name)
    if as_json:
        print(json.dumps({**image.manifest, "directory": str(image_dir(name))}, indent=2))
        return
    print(f"kernel   {image.kernel}")
    print(f"initrd   {image.initrd}")
    print(f"rootfs   {image.rootfs or '-'}")
    print(f"arch     {image.arch}")
    print(f"cmdline  {image.cmdline}")
    inputs = image.manifest.get("inputs", {})
    for key, value in inputs.items():
        print(f"{key:<8} {' '.join(value) if isinstance(value, list) else value}")
