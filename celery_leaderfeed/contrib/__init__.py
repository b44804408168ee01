"""Leader-gated versions of the beat schedulers teams already run.

* :mod:`.django_celery_beat` - ``LeaderDatabaseScheduler`` (``-S leaderfeed-django``, extra
  ``django``): django-celery-beat's ``DatabaseScheduler``, schedules edited in the admin.
* :mod:`.redbeat` - ``LeaderRedBeatScheduler`` (``-S leaderfeed-redbeat``, extra ``redbeat``):
  RedBeat's ``RedBeatScheduler``, entries kept in Redis, without RedBeat's lock.

Each is :class:`~celery_leaderfeed.celery.leader_gated.LeaderGatedMixin` over the original
class, with the hooks that say where that scheduler keeps its gates and metadata. Importing one
imports its scheduler's package (and, for Django, needs Django set up, as the original does).
"""
