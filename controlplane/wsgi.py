"""WSGI entry point, for tools that want one."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings.base")
application = get_wsgi_application()
