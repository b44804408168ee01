"""Edit the test project's schedule as the admin would: ``python -m tests.django_project.edit
COMMAND ...`` (one JSON line on stdout where a command answers).

``migrate``; ``add NAME --every SECONDS [--queue Q] [--one-off] [--start-in S] [--expires-in S]``;
``clocked NAME --in SECONDS [--queue Q]``; ``crontab NAME --minute M``; ``disable NAME``;
``enable NAME``; ``every NAME SECONDS``; ``show NAME``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")
django.setup()

from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402
from django_celery_beat.models import (  # noqa: E402
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
)

TASK = "beat_app.pulse"


def _interval(seconds: float) -> IntervalSchedule:
    micros = round(seconds * 1_000_000)
    interval, _ = IntervalSchedule.objects.get_or_create(
        every=micros, period=IntervalSchedule.MICROSECONDS
    )
    return interval


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edit")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate")
    add = commands.add_parser("add")
    add.add_argument("name")
    add.add_argument("--every", type=float, required=True)
    add.add_argument("--queue")
    add.add_argument("--one-off", action="store_true")
    add.add_argument("--start-in", type=float)
    add.add_argument("--expires-in", type=float)
    clocked = commands.add_parser("clocked")
    clocked.add_argument("name")
    clocked.add_argument("--in", dest="seconds", type=float, required=True)
    clocked.add_argument("--queue")
    cron = commands.add_parser("crontab")
    cron.add_argument("name")
    cron.add_argument("--minute", required=True)
    cron.add_argument("--queue")
    for command in ("disable", "enable", "show"):
        commands.add_parser(command).add_argument("name")
    every = commands.add_parser("every")
    every.add_argument("name")
    every.add_argument("seconds", type=float)
    args = parser.parse_args(argv)

    if args.command == "migrate":
        call_command("migrate", verbosity=0)
        return 0
    now = timezone.now()
    if args.command == "add":
        PeriodicTask.objects.create(
            name=args.name,
            task=TASK,
            interval=_interval(args.every),
            queue=args.queue,
            one_off=args.one_off,
            start_time=None if args.start_in is None else now + timedelta(seconds=args.start_in),
            expires=None if args.expires_in is None else now + timedelta(seconds=args.expires_in),
        )
    elif args.command == "clocked":
        at = ClockedSchedule.objects.create(clocked_time=now + timedelta(seconds=args.seconds))
        PeriodicTask.objects.create(
            name=args.name, task=TASK, clocked=at, one_off=True, queue=args.queue
        )
        print(json.dumps({"clocked_time": at.clocked_time.isoformat()}))
    elif args.command == "crontab":
        # Saved without validation, as a bad import or a raw SQL edit would leave it.
        crontab = CrontabSchedule(minute=args.minute)
        crontab.save()
        PeriodicTask.objects.create(name=args.name, task=TASK, crontab=crontab, queue=args.queue)
    elif args.command in ("disable", "enable"):
        task = PeriodicTask.objects.get(name=args.name)
        task.enabled = args.command == "enable"
        task.save()
    elif args.command == "every":
        task = PeriodicTask.objects.get(name=args.name)
        task.interval = _interval(args.seconds)
        task.save()
    elif args.command == "show":
        task = PeriodicTask.objects.get(name=args.name)
        last = task.last_run_at
        print(
            json.dumps(
                {
                    "enabled": task.enabled,
                    "total_run_count": task.total_run_count,
                    "last_run_at": None if last is None else last.isoformat(),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
