"""Shared kernel: base models, tenant scoping, errors, the audit log, operations endpoints."""
