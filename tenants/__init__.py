"""Tenants: users, organisations, members and roles, API keys, residency policies, regional quotas."""
