"""The OpenAPI 3.0 document of the control API, written by hand to match :mod:`vnix.vmm.api.routes`
(a test requests every path and method listed here and checks the route answers)."""
from __future__ import annotations

from typing import Any

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _body(schema: str) -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "vnix VMM control API", "version": "1",
             "description": "Served by each native VMM process on the Unix socket given with --api-sock. "
                            "One request per connection; bodies at most 64 KiB."},
    "paths": {
        "/vm": {"get": {"summary": "State, uptime and configuration", "operationId": "getVm",
                        "responses": {"200": _ok("Vm")}}},
        "/vm/pause": {"put": {"summary": "Pause every vCPU", "operationId": "pauseVm",
                              "responses": {"200": _ok("State"), "409": _ERROR}}},
        "/vm/resume": {"put": {"summary": "Resume the vCPUs", "operationId": "resumeVm",
                               "responses": {"200": _ok("State"), "409": _ERROR}}},
        "/vm/stop": {"put": {"summary": "Stop: Ctrl-Alt-Del then force after a timeout, or force now",
                             "operationId": "stopVm", "requestBody": _body("StopRequest"),
                             "responses": {"200": _ok("StopAnswer", "forced stop under way"),
                                           "202": _ok("StopAnswer", "Ctrl-Alt-Del sent"),
                                           "400": _ERROR, "409": _ERROR}}},
        "/stats": {"get": {"summary": "Exits, memory, devices, timings", "operationId": "getStats",
                           "responses": {"200": _ok("Stats")}}},
        "/balloon": {
            "get": {"summary": "Balloon size and guest statistics", "operationId": "getBalloon",
                    "responses": {"200": _ok("Balloon"), "409": _ERROR}},
            "put": {"summary": "Set the balloon's size", "operationId": "putBalloon",
                    "requestBody": {**_body("BalloonRequest"), "required": True},
                    "responses": {"200": _ok("Balloon"), "400": _ERROR, "409": _ERROR}},
        },
        "/snapshot": {"put": {"summary": "Pause, save the machine to a file, resume", "operationId": "putSnapshot",
                              "requestBody": {**_body("SnapshotRequest"), "required": True},
                              "responses": {"200": _ok("SnapshotAnswer"), "400": _ERROR, "409": _ERROR,
                                            "501": _ERROR}}},
        "/openapi.json": {"get": {"summary": "This document", "operationId": "getOpenApi",
                                  "responses": {"200": {"description": "OpenAPI 3 document"}}}},
    },
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "RunState": {"type": "string", "enum": ["starting", "running", "paused", "stopping"]},
        "State": {"type": "object", "required": ["state"], "properties": {"state": {"$ref": "#/components/schemas/RunState"}}},
        "Vm": {"type": "object", "required": ["state", "uptime_s", "config"], "properties": {
            "state": {"$ref": "#/components/schemas/RunState"}, "uptime_s": {"type": "number"},
            "started_at_unix": {"type": "number"}, "pid": {"type": "integer"},
            "config": {"type": "object", "description": "the MachineConfig the VMM runs"}}},
        "StopRequest": {"type": "object", "additionalProperties": False, "properties": {
            "graceful": {"type": "boolean", "default": True},
            "timeout": {"type": "number", "nullable": True, "default": 30, "minimum": 0, "exclusiveMinimum": True,
                        "maximum": 3600, "description": "seconds before a forced stop; null: never"}}},
        "StopAnswer": {"type": "object", "properties": {
            "state": {"type": "string"}, "graceful": {"type": "boolean"}, "method": {"type": "string"},
            "delivered": {"type": "boolean"}, "force_after_s": {"type": "number", "nullable": True}}},
        "Stats": {"type": "object", "required": ["exits", "exits_total", "memory", "devices"], "properties": {
            "state": {"$ref": "#/components/schemas/RunState"}, "uptime_s": {"type": "number"},
            "exits": {"type": "object", "additionalProperties": {"type": "integer"}},
            "exits_total": {"type": "integer"},
            "exits_by_vcpu": {"type": "array", "items": {"type": "object"}},
            "io_out_by_port": {"type": "object"}, "io_in_by_port": {"type": "object"}, "mmio_by_addr": {"type": "object"},
            "memory": {"type": "object", "properties": {
                "guest_ram_bytes": {"type": "integer"}, "guest_resident_bytes": {"type": "integer"},
                "rss_bytes": {"type": "integer"}, "vmm_overhead_bytes": {"type": "integer"},
                "balloon": {"$ref": "#/components/schemas/Balloon"}}},
            "devices": {"type": "object", "additionalProperties": {"type": "object"}},
            "serial": {"type": "object"}, "timings_ms": {"type": "object"}}},
        "Balloon": {"type": "object", "nullable": True, "properties": {
            "target_mib": {"type": "number"}, "actual_mib": {"type": "number"}, "inflated_mib": {"type": "number"},
            "reported_bytes": {"type": "integer"}, "driver_active": {"type": "boolean"},
            "guest_stats": {"type": "object", "additionalProperties": {"type": "integer"}},
            "guest_stats_age_s": {"type": "number", "nullable": True}}},
        "BalloonRequest": {"type": "object", "required": ["target_mib"], "additionalProperties": False, "properties": {
            "target_mib": {"type": "integer", "minimum": 0,
                           "description": "the balloon's size in MiB (what the guest gives back), below the VM's RAM"}}},
        "SnapshotRequest": {"type": "object", "required": ["path"], "additionalProperties": False, "properties": {
            "path": {"type": "string", "description": "absolute path of the snapshot file"},
            "memory": {"type": "string", "enum": ["full", "diff"], "default": "full"},
            "base": {"type": "string", "description": "diff: the snapshot it is relative to"},
            "resume": {"type": "boolean", "default": True, "description": "false: stay paused after saving"}}},
        "SnapshotAnswer": {"type": "object", "properties": {
            "path": {"type": "string"}, "memory": {"type": "string"}, "size_bytes": {"type": "integer"},
            "took_ms": {"type": "number"}, "state": {"$ref": "#/components/schemas/RunState"},
            "info": {"type": "object"}}},
    }},
}
