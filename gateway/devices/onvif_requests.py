"""The PTZ and Imaging requests the gateway forwards to a camera, re-encoded from their schema.

A request a VMS sends a virtual device's PTZ or Imaging service is not passed to the camera
as it came: :func:`reencode` rebuilds it from what the ONVIF schema (ver20/ptz/wsdl,
ver20/imaging/wsdl and the tt types they use) defines for the operation, so only a request
of the operation's shape reaches the camera's firmware. Elements are matched by local name
(clients disagree on prefixes, never on names) and written in the schema's order and
namespaces; every value is checked against its XML Schema type; an element the schema does
not define, a missing required one, a repeated one or a malformed value is refused with
``ter:InvalidArgVal``. Attributes the schema does not define are left out. Only the
``Extension`` elements, open to anything by the schema, carry unknown elements on as they
are (a VMS writes back the vendor extensions GetImagingSettings showed it).

Sans-IO: an element in, markup out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lxml import etree

from gateway.soap import NS, SoapFault, Xml

TT = NS["tt"]

# XML Schema lexical forms of the simple types the forwarded requests use.
_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?INF|NaN")
_DURATION = re.compile(r"-?P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?")
_BOOLEAN = frozenset({"true", "false", "1", "0"})
# Strings (tokens, names, URIs) are bounded, not held to the schema's maxLength of 64 for
# tt:ReferenceToken and tt:Name: the camera's own tokens, put in by the forwarder, are
# what the camera issued, and the camera judges what it accepts.
MAX_TEXT = 1024


@dataclass(frozen=True)
class Simple:
    """An XML Schema simple type: ``kind`` float, boolean, duration, name (tt:Name or
    tt:ReferenceToken), uri, or enum (one of ``values``)."""

    kind: str
    values: frozenset[str] = frozenset()

    def check(self, text: str) -> str | None:
        """Why ``text`` is not of this type (None when it is)."""
        if self.kind == "float":
            ok = _FLOAT.fullmatch(text) is not None
        elif self.kind == "boolean":
            ok = text in _BOOLEAN
        elif self.kind == "duration":
            ok = _DURATION.fullmatch(text) is not None
        elif self.kind == "name":
            ok = len(text) <= MAX_TEXT
        elif self.kind == "uri":
            ok = len(text) <= MAX_TEXT and not any(c.isspace() for c in text)
        else:
            ok = text in self.values
        return None if ok else f"not a valid {self.kind}"


def enum(*values: str) -> Simple:
    return Simple("enum", frozenset(values))


FLOAT = Simple("float")
BOOLEAN = Simple("boolean")
DURATION = Simple("duration")
NAME = Simple("name")
URI = Simple("uri")


@dataclass(frozen=True)
class Complex:
    """A sequence of child elements (in schema order), attributes, and whether other
    elements may follow (``xs:any``, the schema's ``Extension`` types)."""

    fields: tuple[Field, ...] = ()
    attrs: Mapping[str, Simple] = field(default_factory=dict)
    open: bool = False


@dataclass(frozen=True)
class Field:
    name: str
    type: Simple | Complex
    required: bool = False
    repeated: bool = False


def _opt(name: str, kind: Simple | Complex) -> Field:
    return Field(name, kind)


def _req(name: str, kind: Simple | Complex) -> Field:
    return Field(name, kind, required=True)


EXTENSION = Complex(open=True)
VECTOR_2D = Complex(attrs={"x": FLOAT, "y": FLOAT, "space": URI})
VECTOR_1D = Complex(attrs={"x": FLOAT, "space": URI})
PTZ_VECTOR = Complex((_opt("PanTilt", VECTOR_2D), _opt("Zoom", VECTOR_1D)))
ON_OFF = enum("OFF", "ON")
AUTO_MANUAL = enum("AUTO", "MANUAL")


def _mode_level(mode: Simple, *, required_level: bool = False) -> Complex:
    level = _req("Level", FLOAT) if required_level else _opt("Level", FLOAT)
    return Complex((_req("Mode", mode), level, _opt("Extension", EXTENSION)))


IMAGING_EXTENSION_3 = Complex(
    (
        _opt("ToneCompensation", _mode_level(NAME)),
        _opt("Defogging", _mode_level(NAME)),
        _opt("NoiseReduction", Complex((_req("Level", FLOAT), _opt("Extension", EXTENSION)))),
        _opt("Extension", EXTENSION),
    ),
    open=True,
)
IMAGING_EXTENSION_2 = Complex(
    (
        Field(
            "IrCutFilterAutoAdjustment",
            Complex(
                (
                    _req("BoundaryType", NAME),
                    _opt("BoundaryOffset", FLOAT),
                    _opt("ResponseTime", DURATION),
                    _opt("Extension", EXTENSION),
                )
            ),
            repeated=True,
        ),
        _opt("Extension", IMAGING_EXTENSION_3),
    ),
    open=True,
)
IMAGING_EXTENSION = Complex(
    (
        _opt("ImageStabilization", _mode_level(enum("OFF", "ON", "AUTO", "Extended"))),
        _opt("Extension", IMAGING_EXTENSION_2),
    ),
    open=True,
)
EXPOSURE_LIMITS = (
    "MinExposureTime",
    "MaxExposureTime",
    "MinGain",
    "MaxGain",
    "MinIris",
    "MaxIris",
    "ExposureTime",
    "Gain",
    "Iris",
)
IMAGING_SETTINGS = Complex(
    (
        _opt("BacklightCompensation", _mode_level(ON_OFF)),
        _opt("Brightness", FLOAT),
        _opt("ColorSaturation", FLOAT),
        _opt("Contrast", FLOAT),
        _opt(
            "Exposure",
            Complex(
                (
                    _req("Mode", AUTO_MANUAL),
                    _opt("Priority", enum("LowNoise", "FrameRate")),
                    _opt(
                        "Window",
                        Complex(attrs={s: FLOAT for s in ("bottom", "top", "right", "left")}),
                    ),
                    *(_opt(name, FLOAT) for name in EXPOSURE_LIMITS),
                )
            ),
        ),
        _opt(
            "Focus",
            Complex(
                (
                    _req("AutoFocusMode", AUTO_MANUAL),
                    _opt("DefaultSpeed", FLOAT),
                    _opt("NearLimit", FLOAT),
                    _opt("FarLimit", FLOAT),
                    _opt("Extension", EXTENSION),
                )
            ),
        ),
        _opt("IrCutFilter", enum("ON", "OFF", "AUTO")),
        _opt("Sharpness", FLOAT),
        _opt("WideDynamicRange", _mode_level(ON_OFF)),
        _opt(
            "WhiteBalance",
            Complex(
                (
                    _req("Mode", AUTO_MANUAL),
                    _opt("CrGain", FLOAT),
                    _opt("CbGain", FLOAT),
                    _opt("Extension", EXTENSION),
                )
            ),
        ),
        _opt("Extension", IMAGING_EXTENSION),
    )
)
FOCUS_MOVE = Complex(
    (
        _opt("Absolute", Complex((_req("Position", FLOAT), _opt("Speed", FLOAT)))),
        _opt("Relative", Complex((_req("Distance", FLOAT), _opt("Speed", FLOAT)))),
        _opt("Continuous", Complex((_req("Speed", FLOAT),))),
    )
)

_PROFILE = _req("ProfileToken", NAME)
_SOURCE = (_req("VideoSourceToken", NAME),)
_SPEED = _opt("Speed", PTZ_VECTOR)

# Operation -> its request's fields, per service namespace.
REQUESTS: dict[str, dict[str, tuple[Field, ...]]] = {
    NS["tptz"]: {
        "GetServiceCapabilities": (),
        "GetNodes": (),
        "GetNode": (_req("NodeToken", NAME),),
        "GetConfigurations": (),
        "GetConfiguration": (_req("PTZConfigurationToken", NAME),),
        "GetConfigurationOptions": (_req("ConfigurationToken", NAME),),
        "GetStatus": (_PROFILE,),
        "ContinuousMove": (_PROFILE, _req("Velocity", PTZ_VECTOR), _opt("Timeout", DURATION)),
        "RelativeMove": (_PROFILE, _req("Translation", PTZ_VECTOR), _SPEED),
        "AbsoluteMove": (_PROFILE, _req("Position", PTZ_VECTOR), _SPEED),
        "Stop": (_PROFILE, _opt("PanTilt", BOOLEAN), _opt("Zoom", BOOLEAN)),
        "GetPresets": (_PROFILE,),
        "GotoPreset": (_PROFILE, _req("PresetToken", NAME), _SPEED),
        "SetPreset": (_PROFILE, _opt("PresetName", NAME), _opt("PresetToken", NAME)),
        "RemovePreset": (_PROFILE, _req("PresetToken", NAME)),
        "GotoHomePosition": (_PROFILE, _SPEED),
        "SetHomePosition": (_PROFILE,),
    },
    NS["timg"]: {
        "GetServiceCapabilities": (),
        "GetImagingSettings": _SOURCE,
        "SetImagingSettings": (
            *_SOURCE,
            _req("ImagingSettings", IMAGING_SETTINGS),
            _opt("ForcePersistence", BOOLEAN),
        ),
        "GetOptions": _SOURCE,
        "Move": (*_SOURCE, _req("Focus", FOCUS_MOVE)),
        "Stop": _SOURCE,
        "GetMoveOptions": _SOURCE,
        "GetStatus": _SOURCE,
    },
}


def invalid(reason: str) -> SoapFault:
    return SoapFault("Sender", ("ter:InvalidArgVal",), reason)


def _elements(node: etree._Element) -> list[etree._Element]:
    return [c for c in node if isinstance(c.tag, str)]


def _build(
    source: etree._Element, kind: Complex, target: etree._Element, namespace: str, path: str
) -> None:
    """Append to ``target`` the children of ``source`` as ``kind`` defines them."""
    for name, simple in kind.attrs.items():
        value = source.get(name)
        if value is not None:
            why = simple.check(value.strip())
            if why:
                raise invalid(f"{path}@{name}: {why}")
            target.set(name, value.strip())
    found: dict[str, list[etree._Element]] = {}
    others: list[etree._Element] = []
    for item in _elements(source):
        local = etree.QName(item).localname
        if any(f.name == local for f in kind.fields):
            found.setdefault(local, []).append(item)
        elif kind.open:
            others.append(item)
        else:
            raise invalid(f"{path}: unexpected element {local}")
    for spec in kind.fields:
        items = found.get(spec.name, [])
        where = f"{path}/{spec.name}"
        if not items and spec.required:
            raise invalid(f"{where} is missing")
        if len(items) > 1 and not spec.repeated:
            raise invalid(f"{where} given {len(items)} times")
        for item in items:
            out = etree.SubElement(target, etree.QName(namespace, spec.name))
            if isinstance(spec.type, Simple):
                if _elements(item):
                    raise invalid(f"{where}: a value, not elements, expected")
                text = (item.text or "").strip()
                why = spec.type.check(text)
                if why:
                    raise invalid(f"{where}: {why}")
                out.text = text
            else:
                # Inside an operation the types' elements are tt's, whatever the service.
                _build(item, spec.type, out, TT, where)
    for item in others:
        target.append(etree.fromstring(etree.tostring(item, with_tail=False)))


def reencode(operation: etree._Element, namespace: str) -> Xml:
    """``operation`` (a request element of the service ``namespace``) rebuilt from its schema,
    as markup; :func:`invalid` fault when it does not match it."""
    name = etree.QName(operation).localname
    fields = REQUESTS.get(namespace, {}).get(name)
    if fields is None:
        raise invalid(f"{name} is not an operation the gateway forwards")
    root = etree.Element(etree.QName(namespace, name), nsmap={None: namespace, "tt": TT})
    _build(operation, Complex(fields), root, namespace, name)
    return Xml(etree.tostring(root, encoding="unicode"))
