from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "controlplane.core"
    label = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        from controlplane.core.logging import install_request_id_record_factory

        install_request_id_record_factory()
