from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    label = "tenants"
    verbose_name = "Tenants"

    def ready(self) -> None:
        # Registers the OpenAPI descriptions of our authentication classes with drf-spectacular.
        from tenants.api import schema  # noqa: F401
