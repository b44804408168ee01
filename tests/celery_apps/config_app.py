"""An app configured only from the environment, for the tests of configuration mistakes.

``LEADERFEED_TEST_CONF`` holds a JSON object of settings, spelled as the user would write them;
with ``LEADERFEED_TEST_NAMESPACE`` set (e.g. ``CELERY``) they are loaded the way Django projects
load theirs, ``config_from_object(settings, namespace=...)``, else with ``app.conf.update``.
The beat scheduler is ``LeaderScheduler`` unless the settings name another.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

from celery import Celery

import celery_leaderfeed

CONF = json.loads(os.environ.get("LEADERFEED_TEST_CONF", "{}"))
NAMESPACE = os.environ.get("LEADERFEED_TEST_NAMESPACE")

app = Celery("config_app")
if NAMESPACE:
    app.config_from_object(SimpleNamespace(**CONF), namespace=NAMESPACE)
else:
    app.conf.update(CONF)
if "beat_scheduler" not in CONF:
    app.conf.beat_scheduler = "celery_leaderfeed.beat:LeaderScheduler"
celery_leaderfeed.install(app)
