"""Sovereign inference cloud control plane: Django project and core domain."""
