"""ASGI entry point (web process, so that responses can stream).

The generation endpoints of `/v1` take a lean path in front of Django's handler
(`controlplane.inference.api.asgi`); everything else goes to Django's handler.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings.base")
django_application = get_asgi_application()

from controlplane.inference.api.asgi import InferenceFastPath  # noqa: E402  # after Django's set-up

application = InferenceFastPath(django_application)
