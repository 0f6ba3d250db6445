"""Runs the Pulumi program under Pulumi's mocks: no CLI, no cloud.

Imported by the tests of this folder once they have skipped when pulumi or
pulumi_gcp is not importable.

`run_program(values)` declares the program with the given configuration
values and returns every registered resource with its inputs, parent and
ignore_changes, as the engine would have received them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor

ROOT = Path(__file__).resolve().parents[2]
PROGRAM_DIR = ROOT / "iac" / "pulumi"
if str(PROGRAM_DIR) not in sys.path:
    sys.path.insert(0, str(PROGRAM_DIR))

PROJECT = "my-ml-project"
PROJECT_NUMBER = "123456789012"


@dataclass(frozen=True)
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    parent_type: str
    ignore_changes: tuple[str, ...]


class _Mocks(pulumi.runtime.Mocks):
    """Gives each resource the outputs the cloud would compute from its inputs."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = dict(args.inputs)
        if args.typ == "gcp:serviceaccount/account:Account":
            email = f"{args.inputs['accountId']}@{args.inputs['project']}.iam.gserviceaccount.com"
            state.update(email=email, name=f"projects/{args.inputs['project']}/serviceAccounts/{email}")
        elif args.typ == "gcp:projects/iAMCustomRole:IAMCustomRole":
            state["name"] = f"projects/{args.inputs['project']}/roles/{args.inputs['roleId']}"
        elif args.typ == "gcp:logging/projectSink:ProjectSink":
            state["writerIdentity"] = f"serviceAccount:sink-{args.inputs['name']}@logging.example"
        elif args.typ == "gcp:pubsub/topic:Topic":
            return f"projects/{args.inputs['project']}/topics/{args.inputs['name']}", state
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "gcp:organizations/getProject:getProject":
            return {"number": PROJECT_NUMBER, "projectId": args.args.get("projectId")}
        raise AssertionError(f"unexpected call {args.token}")


class _Recorder(MockMonitor):
    def __init__(self, mocks: _Mocks) -> None:
        super().__init__(mocks)
        self.requests: list[tuple[str, str, str, tuple[str, ...]]] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - the gRPC method's name
        self.requests.append((request.type, request.name, request.parent, tuple(request.ignoreChanges)))
        return super().RegisterResource(request)


def run_program(values: dict[str, Any]) -> list[Registered]:
    from car_iac.program import run

    mocks = _Mocks()
    monitor = _Recorder(mocks)
    pulumi.runtime.set_mocks(mocks, project="car-edge", stack="test", preview=False, monitor=monitor)

    @pulumi.runtime.test
    def program() -> None:
        run({"project": PROJECT, **values})

    program()
    by_urn = monitor.get_registered_resources()
    registered = []
    for typ, name, parent, ignore in monitor.requests:
        if typ == "pulumi:pulumi:Stack":
            continue
        urn = monitor.make_urn(parent, typ, name)
        parent_type = parent.split("::")[-2].split("$")[-1] if parent else ""
        registered.append(Registered(typ, name, dict(by_urn[urn].state), parent_type, ignore))
    return registered
