"""Random public ids for memberships and invitations, used in URLs instead of primary keys.

Added in three steps (nullable, filled row by row, then unique) so that existing rows each get
their own value rather than one shared default.
"""

from django.db import migrations, models

import tenants.models


def fill_public_ids(apps, schema_editor):
    for model_name, make_id in (
        ("Membership", tenants.models.membership_public_id),
        ("Invitation", tenants.models.invitation_public_id),
    ):
        model = apps.get_model("tenants", model_name)
        for row in model.objects.filter(public_id__isnull=True).only("pk"):
            model.objects.filter(pk=row.pk).update(public_id=make_id())


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="membership",
            name="public_id",
            field=models.CharField(editable=False, max_length=32, null=True),
        ),
        migrations.AddField(
            model_name="invitation",
            name="public_id",
            field=models.CharField(editable=False, max_length=32, null=True),
        ),
        migrations.RunPython(fill_public_ids, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="membership",
            name="public_id",
            field=models.CharField(
                default=tenants.models.membership_public_id, editable=False, max_length=32, unique=True
            ),
        ),
        migrations.AlterField(
            model_name="invitation",
            name="public_id",
            field=models.CharField(
                default=tenants.models.invitation_public_id, editable=False, max_length=32, unique=True
            ),
        ),
    ]
