"""The alarm feed: triggers fired on a cron schedule or an interval, without any outside service.

As in OpenWhisk, a feed is an action that hears of a trigger's life through the parameter
lifecycleEvent (CREATE, READ, UPDATE, DELETE, PAUSE, UNPAUSE) with triggerName and authKey.
Squall ships two in the shared package /whisk.system/alarms:

    alarm      cron="*/5 * * * *"      (minute hour day-of-month month day-of-week)
    interval   minutes=N  (or seconds=N, a Squall extension for short periods)

both with optional trigger_payload, startDate, stopDate (epoch ms or ISO 8601) and maxTriggers.
The feed actions run in containers like any action; containers cannot reach the platform, so a
feed action states the change in its result ({"alarm": {...}}) and this provider, which sees
every completed activation of those actions, applies it: registrations are kept in Cassandra
(namespace whisk.system, collection "alarms") and fired by the controller's scheduler.
With several controllers each fires its own schedule; run the scheduler on one
(SQUALL_CONTROLLER_ALARMS=false on the others).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass

from controller.auth import Identity
from controller.entities import build_package, system_action
from squall.errors import BadRequest, SquallError
from squall.store import Store

log = logging.getLogger(__name__)

SYSTEM_NAMESPACE = "whisk.system"
PACKAGE = "alarms"
COLLECTION = "alarms"

FEED_CODE = '''
import datetime

EVENTS = ("CREATE", "READ", "UPDATE", "DELETE", "PAUSE", "UNPAUSE")


def _cron_ok(cron):
    return isinstance(cron, str) and len(cron.split()) == 5


def main(args):
    event = args.get("lifecycleEvent", "CREATE")
    trigger = args.get("triggerName")
    if event not in EVENTS:
        return {"error": "lifecycleEvent must be one of " + ", ".join(EVENTS)}
    if not trigger:
        return {"error": "triggerName is required"}
    change = {"event": event, "trigger": trigger, "feed": "%(feed)s"}
    if event in ("CREATE", "UPDATE"):
        if "%(feed)s" == "alarm" and not _cron_ok(args.get("cron")):
            return {"error": "cron must have five fields: minute hour day-of-month month day-of-week"}
        if "%(feed)s" == "interval":
            seconds = args.get("seconds") or 60 * (args.get("minutes") or 0)
            if not isinstance(seconds, (int, float)) or seconds <= 0:
                return {"error": "interval needs minutes (or seconds) greater than 0"}
            change["seconds"] = seconds
        for key in ("cron", "trigger_payload", "startDate", "stopDate", "maxTriggers"):
            if key in args:
                change[key] = args[key]
    return {"alarm": change}
'''


# Cron

def _field(spec: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in spec.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, end = low, high
        elif "-" in body:
            start, end = (int(x) for x in body.split("-", 1))
        else:
            start = end = int(body)
            if step_text:
                end = high
        if start < low or end > high or start > end or step < 1:
            raise ValueError(part)
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]      # 0 = Sunday (7 also means Sunday)

    @classmethod
    def parse(cls, text: str) -> "Cron":
        fields = text.split()
        if len(fields) != 5:
            raise BadRequest("cron must have five fields: minute hour day-of-month month day-of-week")
        try:
            weekdays = _field(fields[4], 0, 7)
            return cls(_field(fields[0], 0, 59), _field(fields[1], 0, 23), _field(fields[2], 1, 31),
                       _field(fields[3], 1, 12), frozenset(d % 7 for d in weekdays))
        except ValueError as exc:
            raise BadRequest(f"cron field '{exc}' is not valid") from None

    def matches(self, when: dt.datetime) -> bool:
        return (when.minute in self.minutes and when.hour in self.hours and when.day in self.days
                and when.month in self.months and (when.isoweekday() % 7) in self.weekdays)


def _epoch_ms(value) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    try:
        return int(dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise BadRequest(f"'{value}' is not a date") from None


# The provider

class AlarmProvider:
    def __init__(self, store: Store, fire):
        self._store = store
        self._fire = fire              # async (identity, namespace, trigger, payload) -> activation id
        self._alarms: dict[str, dict] = {}
        self._task: asyncio.Task | None = None

    async def start(self, schedule: bool) -> None:
        await ensure_package(self._store)
        for doc in await self._store.list_entities(SYSTEM_NAMESPACE, COLLECTION):
            self._alarms[doc["name"]] = doc
        if schedule:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    @staticmethod
    def concerns(activation_json: bytes) -> bool:
        return b'"whisk.system/alarms/' in activation_json

    async def apply_record(self, activation_json: bytes) -> None:
        """A feed action of ours finished: carry out the change its result states."""
        record = json.loads(activation_json)
        path = next((a["value"] for a in record.get("annotations", []) if a["key"] == "path"), "")
        if not str(path).startswith(f"{SYSTEM_NAMESPACE}/{PACKAGE}/"):
            return   # some other action's result that merely mentions the package
        change = (record.get("response") or {}).get("result", {}).get("alarm")
        if not record.get("response", {}).get("success") or not isinstance(change, dict):
            return   # the feed refused (its record says why) or changed nothing
        # Only the namespace that ran the feed may change alarms of its own triggers.
        trigger_ns = str(change.get("trigger", "")).strip("/").split("/", 1)[0]
        if trigger_ns != record.get("namespace"):
            log.warning("alarm change for %s refused: the feed ran in %s", trigger_ns, record.get("namespace"))
            return
        try:
            await self.apply(change)
        except SquallError as exc:
            log.warning("alarm change refused: %s", exc.message)

    async def apply(self, change: dict) -> None:
        trigger = str(change.get("trigger", "")).strip("/")
        if trigger.count("/") != 1:
            raise BadRequest("triggerName must be /namespace/trigger")
        event = change.get("event")
        if event == "DELETE":
            self._alarms.pop(trigger, None)
            await self._store.delete_entity(SYSTEM_NAMESPACE, COLLECTION, trigger)
            return
        if event in ("PAUSE", "UNPAUSE"):
            doc = self._alarms.get(trigger)
            if doc is not None:
                doc = {**doc, "status": "paused" if event == "PAUSE" else "active"}
                await self._save(doc)
            return
        if event not in ("CREATE", "UPDATE"):
            return
        doc = {"name": trigger, "feed": change.get("feed"), "status": "active", "fired": 0,
               "payload": change.get("trigger_payload") or {}, "maxTriggers": change.get("maxTriggers"),
               "startDate": _epoch_ms(change.get("startDate")), "stopDate": _epoch_ms(change.get("stopDate")),
               "created": int(time.time() * 1000), "updated": int(time.time() * 1000)}
        if change.get("feed") == "interval":
            doc["seconds"] = float(change["seconds"])
        else:
            Cron.parse(change.get("cron", ""))
            doc["cron"] = change["cron"]
        if not isinstance(doc["payload"], dict):
            raise BadRequest("trigger_payload must be an object")
        await self._save(doc)

    def registration(self, namespace: str, trigger: str) -> dict | None:
        return self._alarms.get(f"{namespace}/{trigger}")

    async def _save(self, doc: dict) -> None:
        self._alarms[doc["name"]] = doc
        await self._store.put_entity(SYSTEM_NAMESPACE, COLLECTION, doc["name"], doc, create_only=False)

    async def _run(self) -> None:
        last_minute = None
        while True:
            await asyncio.sleep(1.0 - (time.time() % 1.0))   # on each second
            now = time.time()
            minute = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(second=0, microsecond=0)   # cron in UTC
            new_minute = minute != last_minute
            last_minute = minute
            for doc in list(self._alarms.values()):
                try:
                    if self._due(doc, now, minute, new_minute):
                        await self._fire_alarm(doc, now)
                except Exception:
                    log.exception("alarm %s failed", doc.get("name"))

    @staticmethod
    def _due(doc: dict, now: float, minute: dt.datetime, new_minute: bool) -> bool:
        ms = now * 1000
        if doc.get("status") != "active":
            return False
        if doc.get("startDate") and ms < doc["startDate"]:
            return False
        if doc.get("stopDate") and ms > doc["stopDate"]:
            return False
        if doc.get("maxTriggers") and doc.get("fired", 0) >= doc["maxTriggers"]:
            return False
        if "seconds" in doc:
            last = doc.get("last_fired") or doc["created"]
            return ms - last >= doc["seconds"] * 1000 - 500
        return new_minute and Cron.parse(doc["cron"]).matches(minute)

    async def _fire_alarm(self, doc: dict, now: float) -> None:
        namespace, trigger = doc["name"].split("/", 1)
        owner = Identity(subject=namespace, uuid="", key="", namespaces=(namespace,))
        payload = {**doc.get("payload", {}), "alarmTime": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat()}
        doc.update(fired=doc.get("fired", 0) + 1, last_fired=int(now * 1000))
        try:
            await self._fire(owner, namespace, trigger, payload)
        except SquallError as exc:   # trigger gone or throttled: the alarm stays, as in OpenWhisk
            log.warning("alarm for %s could not fire: %s", doc["name"], exc.message)
        await self._save(doc)


async def ensure_package(store: Store) -> None:
    """The shared package /whisk.system/alarms with its feed actions (created or updated)."""
    package = build_package(SYSTEM_NAMESPACE, PACKAGE, {"publish": True, "annotations": [
        {"key": "description", "value": "Alarms: fire triggers on a schedule"}]}, None)
    if await store.get_entity(SYSTEM_NAMESPACE, "packages", PACKAGE) is None:
        await store.put_entity(SYSTEM_NAMESPACE, "packages", PACKAGE, package, create_only=False)
    for feed in ("alarm", "interval"):
        await store.ensure_action(system_action(
            SYSTEM_NAMESPACE, f"{PACKAGE}/{feed}", FEED_CODE % {"feed": feed}, annotations=(("feed", True),)))
