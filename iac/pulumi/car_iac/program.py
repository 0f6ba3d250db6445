"""The program: reads the configuration, declares the resources, exports."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pulumi

from car_iac import edge_policy
from car_iac.responder import Responder, ResponderArgs, source_archive
from car_iac.settings import ConfigError, Settings, from_sources

PROGRAM_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PROGRAM_DIR.parents[1]
KEYS_STR = ("policyName", "policyDescription", "defaultAction", "region", "responderConfig")
KEYS_OBJECT = ("trustedRanges", "operatorRules", "trustedPriority", "bandStart", "bandEnd", "deployResponder")


def read_config(config: pulumi.Config) -> dict[str, Any]:
    """The program's Pulumi configuration as parsed values (absent keys left out)."""
    values: dict[str, Any] = {}
    for key in KEYS_STR:
        if (text := config.get(key)) is not None:
            values[key] = text
    for key in KEYS_OBJECT:
        if (value := config.get_object(key)) is not None:
            values[key] = value
    project = pulumi.Config("gcp").get("project")
    if project:
        values["project"] = project
    return values


def load_responder_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"responderConfig: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"responderConfig: {path}: not valid TOML: {exc}") from None


def run(values: dict[str, Any]) -> Settings:
    """Declares everything the configuration asks for and exports its names."""
    config_path = (PROGRAM_DIR / values.get("responderConfig", "../../config/responder.toml")).resolve()
    settings = from_sources(values, load_responder_config(config_path))
    edge = edge_policy.declare(settings)
    pulumi.export("policy", edge.policy.name)
    pulumi.export("policy_self_link", edge.policy.self_link)
    pulumi.export("band", {"start": settings.band_start, "end": settings.band_end})
    pulumi.export("rule_priorities", sorted(rule.priority for rule in settings.rules))
    if settings.deploy is not None:
        responder = Responder(
            "responder",
            ResponderArgs(
                project=settings.project,
                policy_name=settings.policy_name,
                policy_region=settings.policy_region,
                band_start=settings.band_start,
                band_end=settings.band_end,
                deploy=settings.deploy,
                source=source_archive(REPO_ROOT, config_path),
                address_groups=settings.address_groups,
            ),
            opts=pulumi.ResourceOptions(depends_on=[edge.policy]),
        )
        pulumi.export("responder_functions", sorted(responder.functions))
    return settings
