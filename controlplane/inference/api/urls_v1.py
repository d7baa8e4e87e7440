"""`/v1`: the OpenAI-compatible inference API (API keys only)."""

from __future__ import annotations

from django.urls import path, re_path

from controlplane.inference.api import v1
from controlplane.inference.api.receipt_keys import ReceiptKeySetView

urlpatterns = [
    path("models", v1.models, name="v1-models"),
    path("models/<str:name>", v1.model_detail, name="v1-model-detail"),
    path("chat/completions", v1.chat_completions, name="v1-chat-completions"),
    path("completions", v1.completions, name="v1-completions"),
    path("embeddings", v1.embeddings, name="v1-embeddings"),
    path("receipts/keys", ReceiptKeySetView.as_view(), name="v1-receipt-keys"),
    path("receipts/<str:request_id>", v1.receipt_detail, name="v1-receipt"),
    re_path(r"^(?P<rest>.*)$", v1.not_found, name="v1-not-found"),
]
