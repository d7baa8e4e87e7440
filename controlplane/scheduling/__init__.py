"""Placement: the pure policy function shared by live admission and the trace-driven simulator.

``policy`` (pure: request and host states in, a placement or a reasoned refusal out), ``perf`` (pure
roofline estimates per accelerator class and model) and ``fleet_view`` (the one ORM adapter that builds
host states from the fleet's selectors).
"""
