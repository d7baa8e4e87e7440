"""Effective-dated FX and tax rates, maintained by operators (central)."""

from __future__ import annotations

from django.db import models

from controlplane.core.models import CentralModel


class FxRate(CentralModel):
    """Units of `currency` per one US dollar, in force from `effective_from` until superseded."""

    currency = models.CharField(max_length=3)
    per_usd = models.DecimalField(max_digits=20, decimal_places=8)
    effective_from = models.DateTimeField()
    source = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ("currency", "-effective_from")
        constraints = (
            models.UniqueConstraint(fields=["currency", "effective_from"], name="fx_unique_effective"),
            models.CheckConstraint(condition=models.Q(per_usd__gt=0), name="fx_positive"),
        )

    def __str__(self) -> str:
        return f"{self.currency} {self.per_usd}/USD from {self.effective_from:%Y-%m-%d}"


class TaxRate(CentralModel):
    country = models.CharField(max_length=2)
    tax_name = models.CharField(max_length=80)
    rate_percent = models.DecimalField(max_digits=6, decimal_places=3)
    effective_from = models.DateField()
    note = models.TextField(blank=True)

    class Meta:
        ordering = ("country", "-effective_from")
        constraints = (
            models.UniqueConstraint(fields=["country", "effective_from"], name="tax_unique_effective"),
            models.CheckConstraint(
                condition=models.Q(rate_percent__gte=0) & models.Q(rate_percent__lte=100), name="tax_in_range"
            ),
        )

    def __str__(self) -> str:
        return f"{self.country} {self.tax_name} {self.rate_percent}% from {self.effective_from}"
