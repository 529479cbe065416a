"""The manager's REST API (FastAPI): ``vnix.api.app.create_api(manager)``; role dependencies
in ``vnix.api.deps``."""
from __future__ import annotations
