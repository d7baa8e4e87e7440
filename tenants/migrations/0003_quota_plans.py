"""Quota plans: tiers of default limits. RegionalQuota rows become per-region overrides, and a limit
left empty is the plan's. Rows that held exactly the old defaults (the standard plan's values) did not
override anything and are emptied; any other value stays as an override."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models

QUOTA_FIELDS = ("requests_per_minute", "tokens_per_minute", "concurrent_requests", "monthly_tokens")

PLANS = [
    {
        "slug": "free",
        "name": "Free",
        "description": "Trying the service: a few requests at a time.",
        "requests_per_minute": 60,
        "tokens_per_minute": 20_000,
        "concurrent_requests": 2,
        "monthly_tokens": 2_000_000,
        "is_default": False,
    },
    {
        "slug": "standard",
        "name": "Standard",
        "description": "The default for new organisations.",
        "requests_per_minute": 600,
        "tokens_per_minute": 200_000,
        "concurrent_requests": 16,
        "monthly_tokens": 100_000_000,
        "is_default": True,
    },
    {
        "slug": "enterprise",
        "name": "Enterprise",
        "description": "Production traffic under a contract.",
        "requests_per_minute": 6_000,
        "tokens_per_minute": 2_000_000,
        "concurrent_requests": 128,
        "monthly_tokens": 2_000_000_000,
        "is_default": False,
    },
]


def forward(apps: Any, schema_editor: Any) -> None:
    alias = schema_editor.connection.alias
    plan_model = apps.get_model("tenants", "QuotaPlan")
    quota_model = apps.get_model("tenants", "RegionalQuota")
    for plan in PLANS:
        plan_model.objects.using(alias).create(**plan)
    standard = next(p for p in PLANS if p["is_default"])
    for field in QUOTA_FIELDS:
        quota_model._base_manager.using(alias).filter(**{field: standard[field]}).update(**{field: None})


def backward(apps: Any, schema_editor: Any) -> None:
    alias = schema_editor.connection.alias
    quota_model = apps.get_model("tenants", "RegionalQuota")
    standard = next(p for p in PLANS if p["is_default"])
    for field in QUOTA_FIELDS:
        quota_model._base_manager.using(alias).filter(**{f"{field}__isnull": True}).update(**{field: standard[field]})


class Migration(migrations.Migration):
    dependencies = [("tenants", "0002_public_ids")]

    operations = [
        migrations.CreateModel(
            name="QuotaPlan",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                ("slug", models.SlugField(max_length=40, unique=True)),
                ("name", models.CharField(max_length=80)),
                ("description", models.CharField(blank=True, max_length=300)),
                ("requests_per_minute", models.PositiveIntegerField()),
                ("tokens_per_minute", models.PositiveIntegerField()),
                ("concurrent_requests", models.PositiveIntegerField()),
                ("monthly_tokens", models.PositiveBigIntegerField()),
                (
                    "is_default",
                    models.BooleanField(default=False, help_text="the plan of organisations that name none"),
                ),
            ],
            options={
                "ordering": ("requests_per_minute", "slug"),
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("is_default", True)), fields=("is_default",), name="quota_plan_one_default"
                    )
                ],
            },
        ),
        migrations.AddField(
            model_name="organization",
            name="quota_plan",
            field=models.ForeignKey(
                blank=True,
                help_text="empty: the default plan",
                null=True,
                on_delete=models.deletion.PROTECT,
                related_name="organizations",
                to="tenants.quotaplan",
            ),
        ),
        migrations.AlterField(
            model_name="regionalquota", name="requests_per_minute", field=models.PositiveIntegerField(blank=True, null=True)
        ),
        migrations.AlterField(
            model_name="regionalquota", name="tokens_per_minute", field=models.PositiveIntegerField(blank=True, null=True)
        ),
        migrations.AlterField(
            model_name="regionalquota", name="concurrent_requests", field=models.PositiveIntegerField(blank=True, null=True)
        ),
        migrations.AlterField(
            model_name="regionalquota", name="monthly_tokens", field=models.PositiveBigIntegerField(blank=True, null=True)
        ),
        migrations.RunPython(forward, backward),
    ]
