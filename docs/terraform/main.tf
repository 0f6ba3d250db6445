# The ML cluster's edge policy, the safe pattern for Terraform, beside the
# Cloud Armor responder. The policy declares no `rule` block and ignores
# `rule`: every rule is its own google_compute_security_policy_rule, which
# manages only its own priority. The responder's band (20000..20999 by
# default, config/responder.toml [band]) is therefore never read as drift, and
# no apply removes a band rule. See README.md, "If Pulumi or Terraform manages
# the policy".

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source = "hashicorp/google"
      # A google_compute_security_policy_rule at priority 2147483647 takes
      # over the default rule (fixed in the provider in late 2024).
      version = ">= 7.0"
    }
  }
}

variable "project" {
  type = string
}

variable "policy_name" {
  type    = string
  default = "ml-cluster-edge"
}

variable "default_action" {
  description = "The default rule: allow, deny(403), deny(404) or deny(502)."
  type        = string
  default     = "deny(403)"
}

variable "trusted_ranges" {
  description = "Allowed before everything else, 10 ranges to a rule."
  type        = list(string)
  default     = []
}

variable "trusted_priority" {
  type    = number
  default = 1000
}

variable "band" {
  description = "The responder's priorities: no rule of this configuration may fall in them."
  type        = object({ start = number, end = number })
  default     = { start = 20000, end = 20999 }
}

locals {
  trusted_chunks = chunklist(var.trusted_ranges, 10)
  trusted_priorities = [
    for i in range(length(local.trusted_chunks)) : var.trusted_priority + i
  ]
}

resource "google_compute_security_policy" "edge" {
  project     = var.project
  name        = var.policy_name
  description = "Edge policy of the ML cluster; priorities ${var.band.start}..${var.band.end} belong to the Cloud Armor responder"
  type        = "CLOUD_ARMOR"

  # No rule blocks here: inline rules are the complete set, and a refresh
  # would turn the responder's band into drift that apply removes.
  lifecycle {
    ignore_changes = [rule]
  }
}

resource "google_compute_security_policy_rule" "default" {
  project         = var.project
  security_policy = google_compute_security_policy.edge.name
  priority        = 2147483647
  action          = var.default_action
  description     = "default rule"
  match {
    versioned_expr = "SRC_IPS_V1"
    config {
      src_ip_ranges = ["*"]
    }
  }
}

resource "google_compute_security_policy_rule" "trusted" {
  count           = length(local.trusted_chunks)
  project         = var.project
  security_policy = google_compute_security_policy.edge.name
  priority        = local.trusted_priorities[count.index]
  action          = "allow"
  description     = "trusted ranges"
  match {
    versioned_expr = "SRC_IPS_V1"
    config {
      src_ip_ranges = local.trusted_chunks[count.index]
    }
  }

  lifecycle {
    precondition {
      condition     = local.trusted_priorities[count.index] < var.band.start || local.trusted_priorities[count.index] > var.band.end
      error_message = "A trusted rule's priority falls inside the responder's band: move trusted_priority."
    }
  }
}

# An operator rule of your own: its own resource, outside the band.
resource "google_compute_security_policy_rule" "waf_sqli" {
  project         = var.project
  security_policy = google_compute_security_policy.edge.name
  priority        = 3000
  action          = "deny(403)"
  description     = "OWASP SQL injection"
  match {
    expr {
      expression = "evaluatePreconfiguredWaf('sqli-v33-stable')"
    }
  }
}
