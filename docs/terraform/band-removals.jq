# Lists the responder's band rules that a Terraform plan would remove, and
# fails when there is any. Input: the plan as JSON (`terraform show -json`).
#
#   terraform plan -out=tfplan
#   terraform show -json tfplan | jq -r --argjson band_start 20000 --argjson band_end 20999 -f band-removals.jq
#
# Exit 0 and "no band rule removed", or exit 1 with the rules on stderr.
# It looks at both ways a plan removes a rule: a policy whose inline rule
# list loses a priority in the band (the hazard), and a rule resource in the
# band being deleted or replaced.
def in_band: . != null and . >= $band_start and . <= $band_end;
def priorities: [(.rule // .rules // [])[]?.priority];
[
  (.resource_changes[]?
    | select(.type == "google_compute_security_policy" or .type == "google_compute_region_security_policy")
    | .address as $address
    | ((.change.before // {}) | priorities) - ((.change.after // {}) | priorities)
    | .[]
    | select(in_band)
    | {address: $address, priority: .}),
  (.resource_changes[]?
    | select((.type | test("security_policy_rule$")) and (.change.actions | index("delete")))
    | select(.change.before.priority | in_band)
    | {address, priority: .change.before.priority})
]
| if length > 0 then ("the plan removes band rules: " + tojson + "\n" | halt_error(1)) else "no band rule removed" end
