"""The benchmark suite: ``./bench.sh`` (or ``python -m bench``) prints every
table and writes them to BENCHMARKS.md. Each figure is measured in the same
run as its baseline; budgets that are missed are printed as missed.

Sections: calls (API calls per event, rules used, cleanup), planner (CPU),
logsink (throughput, hot stream), coldstart (per entry point vs two floors).
"""
