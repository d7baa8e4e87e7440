"""Placement: the pure policy function shared by live admission and the trace-driven simulator.

Declared now so that the import-linter layers hold from the first commit; the policy itself is
built with the inference path.
"""
