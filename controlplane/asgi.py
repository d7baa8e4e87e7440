"""ASGI entry point (web process, so that responses can stream)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings.base")
application = get_asgi_application()
