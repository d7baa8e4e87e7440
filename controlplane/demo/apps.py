from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo seed (`manage.py seed_demo`): wiring that may use every layer, like settings and urls."""

    name = "controlplane.demo"
    label = "demo"
    verbose_name = "Demo data"
