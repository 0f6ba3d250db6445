"""The ML cluster's edge policy, the safe way (see car_iac/edge_policy.py)."""

import pulumi
from car_iac.program import read_config, run

run(read_config(pulumi.Config()))
