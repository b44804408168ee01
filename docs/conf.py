"""Sphinx configuration of the celery-leaderfeed documentation.

Build (warnings are errors; CI runs the same through ``tox -e docs``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Pages are Markdown read by MyST (``docs/design.md`` and the generated ``docs/benchmarks.md``
are used as they are); the API pages use autodoc; the settings page is generated from
``celery_leaderfeed/celery/settings.py`` by ``docs/_ext/leaderfeed_docs.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS / "_ext"), str(DOCS.parent)]

import celery_leaderfeed  # noqa: E402 - after the path above

project = "celery-leaderfeed"
author = "celery-leaderfeed developers"
copyright = "celery-leaderfeed developers"
release = celery_leaderfeed.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "leaderfeed_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "intersphinx", "_ext", "Thumbs.db", ".DS_Store"]

# MyST: GitHub-style anchors for ## and ### headings, so links such as
# benchmarks.md#6-leader-queue resolve here as they do on a code host.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist", "colon_fence"]

# autodoc: the public names, documented where users import them from.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_preserve_defaults = True

# Intersphinx without the network. The machines that build these pages cannot fetch the
# inventories of Celery, kombu or redis-py, and a build must not depend on a remote site. So
# docs/intersphinx/*.inv are small inventories written by docs/intersphinx/make_inventories.py,
# listing only the objects these pages name, with their public URLs. No inventory of Python's
# own documentation is vendored: hence nitpicky mode stays off (every `Mapping`, `float` and
# `threading.Event` in a signature would need one). What -W still catches: a link to a page or
# heading that does not exist, a malformed directive, a docstring that does not parse, a
# public object without a docstring (docs/_ext), and settings that drift from the code.
intersphinx_mapping = {
    "celery": ("https://docs.celeryq.dev/en/stable/", str(DOCS / "intersphinx" / "celery.inv")),
    "kombu": (
        "https://docs.celeryq.dev/projects/kombu/en/stable/",
        str(DOCS / "intersphinx" / "kombu.inv"),
    ),
    "redis": ("https://redis.readthedocs.io/en/stable/", str(DOCS / "intersphinx" / "redis.inv")),
}
intersphinx_timeout = 1

html_theme = "furo"
html_title = f"celery-leaderfeed {release}"
html_static_path: list[str] = []
pygments_style = "friendly"
pygments_dark_style = "monokai"

# celery_leaderfeed.contrib.django_celery_beat imports django-celery-beat's models, which need
# configured Django settings: the smallest that let autodoc import it (no database is opened).
import django  # noqa: E402
from django.conf import settings as django_settings  # noqa: E402

if not django_settings.configured:
    django_settings.configure(
        INSTALLED_APPS=["django_celery_beat"],
        USE_TZ=True,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    )
    django.setup()
