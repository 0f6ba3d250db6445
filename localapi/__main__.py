"""``python -m localapi --port 8080 [--state FILE] [--op-delay 0.2|MIN,MAX | --op-latency N]
[--serialize-operations [--not-ready-mode http|operation]] [--tier standard|enterprise] ...``"""
from __future__ import annotations

import argparse
import sys

from .faults import FaultConfig
from .server import LocalCloudArmor


def _delay(text: str) -> float | tuple[float, float]:
    if "," in text:
        lo, hi = (float(x) for x in text.split(",", 1))
        return (lo, hi)
    return float(text)


def _seconds(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be a whole number of seconds >= 0")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m localapi", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    p.add_argument("--state", help="JSON file to load from and save to after each commit")
    p.add_argument("--project", help="serve only this project (others are 404); default: any")
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--op-delay", type=_delay, default=0.2, help="seconds, or MIN,MAX")
    timing.add_argument("--op-latency", type=_seconds, metavar="N",
                        help="every mutation's operation takes N whole seconds before it is DONE")
    p.add_argument("--serialize-operations", action="store_true",
                   help="refuse a mutation of a policy with an operation in flight "
                        "(400 resourceNotReady; possible, not documented)")
    p.add_argument("--not-ready-mode", choices=("http", "operation"), default="http",
                   help="with --serialize-operations: a synchronous 400 (http) or a DONE "
                        "operation with RESOURCE_NOT_READY (operation)")
    p.add_argument("--quota", type=int, default=200, help="rules per project")
    p.add_argument("--quota-mode", choices=("operation", "http"), default="operation")
    p.add_argument("--duplicate-mode", choices=("http", "operation"), default="http")
    p.add_argument("--wait-timeout", type=float, default=30.0)
    p.add_argument("--faults", help="FaultConfig as inline JSON or a JSON file path")
    p.add_argument("--seed", type=int)
    groups = p.add_argument_group("address groups (Network Security API)")
    groups.add_argument("--tier", choices=("standard", "enterprise"), default="standard",
                        help="the project's Cloud Armor tier: standard refuses CLOUD_ARMOR "
                             "address groups and rules that reference them")
    groups.add_argument("--ceval-quota", type=int, default=20,
                        help="advanced (expression) rules per project")
    groups.add_argument("--max-items-per-call", type=int, default=1000)
    groups.add_argument("--duplicate-items", choices=("error", "ignore"), default="error")
    groups.add_argument("--absent-items", choices=("error", "ignore"), default="error")
    groups.add_argument("--max-group-capacity", type=int, default=150_000)
    groups.add_argument("--max-policy-attributes", type=int,
                        help="limit on a policy's attribute count (group capacities); default off")
    args = p.parse_args(argv)
    server = LocalCloudArmor(
        op_delay=args.op_delay, quota=args.quota, quota_mode=args.quota_mode,
        duplicate_mode=args.duplicate_mode, wait_timeout=args.wait_timeout,
        state_file=args.state, faults=FaultConfig.from_json(args.faults) if args.faults else None,
        host=args.host, port=args.port, seed=args.seed, project=args.project,
        op_latency=args.op_latency, serialize_operations=args.serialize_operations,
        not_ready_mode=args.not_ready_mode, tier=args.tier, ceval_quota=args.ceval_quota,
        max_items_per_call=args.max_items_per_call, duplicate_items=args.duplicate_items,
        absent_items=args.absent_items, max_group_capacity=args.max_group_capacity,
        max_policy_attributes=args.max_policy_attributes)
    server.start()
    print(f"localapi listening on {server.endpoint}", flush=True)
    try:
        server._thread.join()  # type: ignore[union-attr]
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
