"""The Pulumi program of the ML cluster's edge policy and the responder's resources."""
