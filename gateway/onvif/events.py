"""Event service (ver10/events/wsdl): PullPoint and WS-BaseNotification (push)
subscriptions carrying the cameras' motion.

Every change of a camera's :class:`~gateway.onvif.backend.MotionSource` becomes two
notifications: ``tns1:VideoSource/MotionAlarm`` (State) and
``tns1:RuleEngine/CellMotionDetector/Motion`` (IsMotion). A subscription queues at most
``MAX_QUEUE`` messages (oldest dropped), PullMessages answers at once when some are queued
and otherwise holds until its Timeout; every PullMessages extends the subscription by its
original duration; expired subscriptions are removed. A ``Subscribe`` subscription has the
same queue, filter and lifetime, and a task posting its messages to the consumer
(:mod:`gateway.onvif.push`); both kinds count against ``max_subscriptions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.cancellation import wait_for
from gateway.devices.events import MotionEvent
from gateway.onvif.core import SERVICE_PATHS, Call, CameraSlot, Handler, VirtualDevice, iso_time
from gateway.onvif.push import ConsumerRefused, Delivery, resolve_consumer
from gateway.onvif.xml import NS, SoapFault, Xml, child, child_text, el, text

TEV = NS["tev"]
WSNT = NS["wsnt"]
MAX_QUEUE = 256
MAX_PULL_TIMEOUT = 600.0
DEFAULT_DURATION = 60.0
MAX_DURATION = 86400.0
CONCRETE_SET = "http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet"
CONCRETE = "http://docs.oasis-open.org/wsnt/t-1/TopicExpression/Concrete"

TOPIC_MOTION_ALARM = "VideoSource/MotionAlarm"
TOPIC_CELL_MOTION = "RuleEngine/CellMotionDetector/Motion"
SUBSCRIPTION_PATH = "/onvif/subscription/"

_DURATION_RE = re.compile(
    r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(value: str) -> float:
    """An xs:duration (years and months as 365 and 30 days) in seconds."""
    match = _DURATION_RE.match(value.strip())
    if not match or value.strip() in ("P", "PT") or value.strip().endswith("T"):
        raise ValueError(f"{value!r} is not an xs:duration")
    years, months, days, hours, minutes, seconds = match.groups()
    return (
        int(years or 0) * 365 * 86400
        + int(months or 0) * 30 * 86400
        + int(days or 0) * 86400
        + int(hours or 0) * 3600
        + int(minutes or 0) * 60
        + float(seconds or 0)
    )


def parse_termination(value: str | None, now: float, default: float) -> float:
    """A relative (xs:duration) or absolute (xs:dateTime) termination time as Unix seconds."""
    if value is None or not value.strip():
        return now + default
    value = value.strip()
    if value.startswith("P"):
        try:
            return now + parse_duration(value)
        except ValueError as exc:
            raise _invalid_termination(str(exc)) from None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _invalid_termination(f"{value!r} is neither xs:duration nor xs:dateTime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.now().astimezone().tzinfo).astimezone()
    return moment.timestamp()


def _invalid_termination(reason: str) -> SoapFault:
    return SoapFault("Sender", ("ter:InvalidArgVal",), f"invalid termination time: {reason}")


def _topic_filter(expression: str | None) -> Callable[[str], bool]:
    """A predicate over our topic paths for a ConcreteSet/Concrete TopicExpression."""
    if expression is None or not expression.strip():
        return lambda topic: True
    wanted: list[tuple[str, bool]] = []
    for alternative in expression.split("|"):
        path = "/".join(part.split(":", 1)[-1] for part in alternative.strip().split("/") if part)
        prefix = path.endswith("/.") or alternative.strip().endswith("//.")
        wanted.append((path.removesuffix("/.").rstrip("/"), prefix))

    def matches(topic: str) -> bool:
        return any(topic == p or (pre and topic.startswith(p + "/")) for p, pre in wanted)

    return matches


@dataclass
class Subscription:
    id: str
    duration: float
    expires: float
    accepts: Callable[[str], bool]
    queue: deque[Xml] = field(default_factory=lambda: deque(maxlen=MAX_QUEUE))
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    delivery: Delivery | None = None  # push subscriptions: who gets the messages
    task: asyncio.Task[None] | None = None

    def push(self, topic: str, message: Xml) -> None:
        if self.accepts(topic):
            self.queue.append(message)
            self.wakeup.set()


class EventBroker:
    """The subscriptions of one virtual device and the motion listeners feeding them."""

    def __init__(self, device: VirtualDevice) -> None:
        self.device = device
        self.subscriptions: dict[str, Subscription] = {}
        self._unlisten: list[Callable[[], None]] = []

    def start(self) -> None:
        for slot in self.device.slots:
            source = slot.backend.motion
            if source is not None:
                self._unlisten.append(source.add_listener(self._listener_for(slot)))

    def _listener_for(self, slot: CameraSlot) -> Callable[[MotionEvent], None]:
        def listener(event: MotionEvent) -> None:
            self.publish_motion(slot, event)

        return listener

    def close(self) -> None:
        for unlisten in self._unlisten:
            unlisten()
        self._unlisten.clear()
        for sub in self.subscriptions.values():
            sub.closed = True
            sub.wakeup.set()
            if sub.task is not None:
                sub.task.cancel()
        self.subscriptions.clear()

    def end(self, sub: Subscription) -> None:
        """Remove ``sub`` (expired, unsubscribed, or its consumer gone); a push delivery in
        flight finishes its batch and stops."""
        self.subscriptions.pop(sub.id, None)
        sub.closed = True
        sub.wakeup.set()

    def prune(self, now: float) -> None:
        for sub in [s for s in self.subscriptions.values() if s.expires <= now]:
            self.end(sub)

    def publish_motion(
        self, slot: CameraSlot, event: MotionEvent, operation: str = "Changed"
    ) -> None:
        self.prune(self.device.clock())
        for topic, message in motion_messages(slot, event.active, event.time, operation):
            for sub in self.subscriptions.values():
                sub.push(topic, message)

    def initial_state(self, sub: Subscription, now: float) -> None:
        """Queue every motion property's current value (PropertyOperation Initialized)."""
        for slot in self.device.slots:
            source = slot.backend.motion
            if source is None:
                continue
            for topic, message in motion_messages(slot, bool(source.state), now, "Initialized"):
                sub.push(topic, message)

    def create(
        self,
        now: float,
        expires: float,
        accepts: Callable[[str], bool],
        delivery: Delivery | None = None,
        sid: str | None = None,
    ) -> Subscription:
        self.prune(now)
        if len(self.subscriptions) >= self.device.settings.max_subscriptions:
            raise SoapFault(
                "Receiver",
                ("ter:Action", "ter:TooManySubscriptions"),
                f"at most {self.device.settings.max_subscriptions} subscriptions",
            )
        duration = max(1.0, expires - now)
        sub = Subscription(sid or new_subscription_id(), duration, expires, accepts)
        self.subscriptions[sub.id] = sub
        if delivery is not None:
            sub.delivery = delivery
            sub.task = asyncio.create_task(
                delivery.run(sub.queue, sub.wakeup, lambda: sub.closed, lambda: self.end(sub)),
                name=f"notify {delivery.consumer.url}",
            )
        self.initial_state(sub, now)
        return sub

    def get(self, sid: str | None, now: float) -> Subscription:
        self.prune(now)
        sub = self.subscriptions.get(sid or "")
        if sub is None:
            raise SoapFault(
                "Sender",
                ("ter:InvalidArgVal",),
                "no such subscription (expired or unsubscribed)",
            )
        return sub


def new_subscription_id() -> str:
    return secrets.token_hex(12)


def _simple(name: str, value: str) -> Xml:
    return el("tt:SimpleItem", attrs={"Name": name, "Value": value})


def notification(topic: str, utc: str, operation: str, source: Xml, data: Xml) -> Xml:
    return el(
        "wsnt:NotificationMessage",
        el("wsnt:Topic", f"tns1:{topic}", attrs={"Dialect": CONCRETE_SET}),
        el(
            "wsnt:Message",
            el(
                "tt:Message",
                el("tt:Source", source),
                el("tt:Data", data),
                attrs={"UtcTime": utc, "PropertyOperation": operation},
            ),
        ),
    )


def motion_messages(
    slot: CameraSlot, active: bool, when: float, operation: str
) -> list[tuple[str, Xml]]:
    utc = iso_time(when)
    value = text(active)
    return [
        (
            TOPIC_MOTION_ALARM,
            notification(
                TOPIC_MOTION_ALARM,
                utc,
                operation,
                _simple("Source", slot.video_source),
                _simple("State", value),
            ),
        ),
        (
            TOPIC_CELL_MOTION,
            notification(
                TOPIC_CELL_MOTION,
                utc,
                operation,
                Xml(
                    _simple("VideoSourceConfigurationToken", slot.video_source_config)
                    + _simple("VideoAnalyticsConfigurationToken", f"{slot.name}_analytics")
                    + _simple("Rule", "MotionDetectorRule")
                ),
                _simple("IsMotion", value),
            ),
        ),
    ]


def _broker(call: Call) -> EventBroker:
    broker = call.device.events
    assert isinstance(broker, EventBroker)
    return broker


def service_capabilities(call: Call) -> Xml:
    return el(
        "tev:Capabilities",
        attrs={
            "WSSubscriptionPolicySupport": "false",
            "WSPullPointSupport": "true",
            "WSPausableSubscriptionManagerInterfaceSupport": "false",
            "MaxNotificationProducers": str(call.device.settings.max_subscriptions),
            "MaxPullPoints": str(call.device.settings.max_subscriptions),
            "PersistentNotificationStorage": "false",
        },
    )


def legacy_capabilities(call: Call) -> Xml:
    return el(
        "tt:Events",
        el("tt:XAddr", call.http_url(SERVICE_PATHS["events"])),
        el("tt:WSSubscriptionPolicySupport", "false"),
        el("tt:WSPullPointSupport", "true"),
        el("tt:WSPausableSubscriptionManagerInterfaceSupport", "false"),
    )


async def get_service_capabilities(call: Call) -> Xml:
    return el("tev:GetServiceCapabilitiesResponse", service_capabilities(call))


def _description(source: list[tuple[str, str]], data: list[tuple[str, str]]) -> Xml:
    def items(pairs: list[tuple[str, str]]) -> Xml:
        return Xml(
            "".join(el("tt:SimpleItemDescription", attrs={"Name": n, "Type": t}) for n, t in pairs)
        )

    return el(
        "tt:MessageDescription",
        el("tt:Source", items(source)),
        el("tt:Data", items(data)),
        attrs={"IsProperty": "true"},
    )


async def get_event_properties(call: Call) -> Xml:
    topic = {"wstop:topic": "true"}
    topic_set = el(
        "wstop:TopicSet",
        el(
            "tns1:VideoSource",
            el(
                "tns1:MotionAlarm",
                _description([("Source", "tt:ReferenceToken")], [("State", "xs:boolean")]),
                attrs=topic,
            ),
        ),
        el(
            "tns1:RuleEngine",
            el(
                "tns1:CellMotionDetector",
                el(
                    "tns1:Motion",
                    _description(
                        [
                            ("VideoSourceConfigurationToken", "tt:ReferenceToken"),
                            ("VideoAnalyticsConfigurationToken", "tt:ReferenceToken"),
                            ("Rule", "xs:string"),
                        ],
                        [("IsMotion", "xs:boolean")],
                    ),
                    attrs=topic,
                ),
            ),
        ),
    )
    return el(
        "tev:GetEventPropertiesResponse",
        el("tev:TopicNamespaceLocation", "http://www.onvif.org/onvif/ver10/topics/topicns.xml"),
        el("wsnt:FixedTopicSet", "true"),
        topic_set,
        el("wsnt:TopicExpressionDialect", CONCRETE_SET),
        el("wsnt:TopicExpressionDialect", CONCRETE),
        el(
            "tev:MessageContentFilterDialect",
            "http://www.onvif.org/ver10/tev/messageContentFilter/ItemFilter",
        ),
        el(
            "tev:MessageContentSchemaLocation",
            "http://www.onvif.org/onvif/ver10/schema/onvif.xsd",
        ),
    )


def _requested(call: Call) -> tuple[Callable[[str], bool], float]:
    """The topic filter and termination time a CreatePullPointSubscription/Subscribe asks."""
    expression = child(child(call.op, "Filter"), "TopicExpression")
    accepts = _topic_filter(expression.text if expression is not None else None)
    expires = parse_termination(call.arg("InitialTerminationTime"), call.now, DEFAULT_DURATION)
    if expires <= call.now:
        raise _invalid_termination("termination time lies in the past")
    return accepts, min(expires, call.now + MAX_DURATION)


async def create_pull_point_subscription(call: Call) -> Xml:
    broker = _broker(call)
    accepts, expires = _requested(call)
    sub = broker.create(call.now, expires, accepts)
    return el(
        "tev:CreatePullPointSubscriptionResponse",
        el(
            "tev:SubscriptionReference",
            el("wsa:Address", call.http_url(SUBSCRIPTION_PATH + sub.id)),
        ),
        el("wsnt:CurrentTime", iso_time(call.now)),
        el("wsnt:TerminationTime", iso_time(sub.expires)),
    )


async def subscribe(call: Call) -> Xml:
    """WS-BaseNotification Subscribe: messages are POSTed to the ConsumerReference."""
    broker = _broker(call)
    address = child_text(child(call.op, "ConsumerReference"), "Address")
    if not address:
        raise SoapFault("Sender", ("ter:InvalidArgVal",), "Subscribe without a consumer address")
    accepts, expires = _requested(call)
    try:
        consumer = await resolve_consumer(
            address,
            subscriber=call.remote_ip,
            local_ip=call.local_ip,
            camera_hosts=[slot.config.host for slot in call.device.slots],
            camera_subnets=call.device.settings.camera_subnets,
        )
    except ConsumerRefused as exc:
        raise SoapFault("Sender", ("ter:InvalidArgVal",), f"consumer refused: {exc}") from None
    sid = new_subscription_id()
    url = call.http_url(SUBSCRIPTION_PATH + sid)
    sub = broker.create(call.now, expires, accepts, Delivery(consumer, url), sid)
    return el(
        "wsnt:SubscribeResponse",
        el("wsnt:SubscriptionReference", el("wsa:Address", url)),
        el("wsnt:CurrentTime", iso_time(call.now)),
        el("wsnt:TerminationTime", iso_time(sub.expires)),
    )


def subscription_id(call: Call) -> str | None:
    """From the request path, or from the WS-Addressing To header (some clients post every
    subscription call to the events service)."""
    path = call.path
    if not path.startswith(SUBSCRIPTION_PATH):
        to = call.soap.header_text("To") or ""
        idx = to.find(SUBSCRIPTION_PATH)
        path = to[idx:] if idx >= 0 else ""
    sid = path[len(SUBSCRIPTION_PATH) :] if path else ""
    return sid or None


async def pull_messages(call: Call) -> Xml:
    broker = _broker(call)
    sub = broker.get(subscription_id(call), call.now)
    if sub.delivery is not None:
        raise SoapFault("Sender", ("ter:InvalidArgVal",), "a push subscription is not a pull point")
    timeout_text = call.arg("Timeout") or "PT10S"
    try:
        timeout = min(parse_duration(timeout_text), MAX_PULL_TIMEOUT)
    except ValueError:
        raise SoapFault("Sender", ("ter:InvalidArgVal",), f"Timeout {timeout_text!r}") from None
    limit_text = call.arg("MessageLimit") or "100"
    if not limit_text.isdigit() or int(limit_text) < 1:
        raise SoapFault("Sender", ("ter:InvalidArgVal",), f"MessageLimit {limit_text!r}")
    limit = min(int(limit_text), MAX_QUEUE)
    # PullMessages keeps the subscription alive for another period.
    sub.expires = max(sub.expires, call.now + sub.duration)
    if not sub.queue:
        sub.wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await wait_for(sub.wakeup.wait(), timeout)
    messages = [sub.queue.popleft() for _ in range(min(limit, len(sub.queue)))]
    if not sub.queue:
        sub.wakeup.clear()
    now = call.device.clock()
    sub.expires = max(sub.expires, now + sub.duration)
    return el(
        "tev:PullMessagesResponse",
        el("tev:CurrentTime", iso_time(now)),
        el("tev:TerminationTime", iso_time(sub.expires)),
        messages,
    )


async def renew(call: Call) -> Xml:
    broker = _broker(call)
    sub = broker.get(subscription_id(call), call.now)
    expires = parse_termination(call.arg("TerminationTime"), call.now, sub.duration)
    if expires <= call.now:
        raise _invalid_termination("termination time lies in the past")
    sub.expires = min(expires, call.now + MAX_DURATION)
    sub.duration = max(1.0, sub.expires - call.now)
    return el(
        "wsnt:RenewResponse",
        el("wsnt:TerminationTime", iso_time(sub.expires)),
        el("wsnt:CurrentTime", iso_time(call.now)),
    )


async def unsubscribe(call: Call) -> Xml:
    broker = _broker(call)
    broker.end(broker.get(subscription_id(call), call.now))
    return el("wsnt:UnsubscribeResponse")


async def set_synchronization_point(call: Call) -> Xml:
    broker = _broker(call)
    sub = broker.get(subscription_id(call), call.now)
    broker.initial_state(sub, call.now)
    return el("tev:SetSynchronizationPointResponse")


OPERATIONS: dict[tuple[str, str], Handler] = {
    (TEV, "GetServiceCapabilities"): get_service_capabilities,
    (TEV, "GetEventProperties"): get_event_properties,
    (TEV, "CreatePullPointSubscription"): create_pull_point_subscription,
    (TEV, "PullMessages"): pull_messages,
    (TEV, "SetSynchronizationPoint"): set_synchronization_point,
    (WSNT, "Subscribe"): subscribe,
    (WSNT, "Renew"): renew,
    (WSNT, "Unsubscribe"): unsubscribe,
}

PRE_AUTH = {(TEV, "GetServiceCapabilities")}
