"""Cursor pagination: stable under inserts, no page counts that leak table sizes.

One base holds the page-size rules; each subclass only names the (unique) ordering it pages by.
"""

from __future__ import annotations

from rest_framework.pagination import CursorPagination


class _ProjectCursorPagination(CursorPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class CreatedCursorPagination(_ProjectCursorPagination):
    ordering = ("-created_at", "-id")


class CodeCursorPagination(_ProjectCursorPagination):
    ordering = ("code",)


class IdCursorPagination(_ProjectCursorPagination):
    ordering = ("id",)


class NameCursorPagination(_ProjectCursorPagination):
    ordering = ("name",)


class SlugCursorPagination(_ProjectCursorPagination):
    ordering = ("slug",)


class RegionCursorPagination(_ProjectCursorPagination):
    ordering = ("region",)
