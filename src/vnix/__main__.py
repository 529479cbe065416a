from __future__ import annotations

from vnix.cli.main import main

main()
