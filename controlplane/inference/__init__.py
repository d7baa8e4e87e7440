"""Inference: admission, the /v1 API and settlement. Now: the regional content store."""
