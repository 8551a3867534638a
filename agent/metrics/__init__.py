"""Metrics the agent records on the device and ships as telemetry (see histogram.py)."""
