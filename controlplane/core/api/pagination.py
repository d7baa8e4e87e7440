"""Cursor pagination: stable under inserts, no page counts that leak table sizes."""

from __future__ import annotations

from rest_framework.pagination import CursorPagination


class CreatedCursorPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class CodeCursorPagination(CursorPagination):
    ordering = ("code",)
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class IdCursorPagination(CursorPagination):
    ordering = ("id",)
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
