"""Geolocation, offline: where an IP address is (GeoIP), where a photo was taken (EXIF GPS), which
places and coordinates a page or a note names, and what lies at a point or goes by a name.

Only URL targets touch the network (through the guarded fetcher); everything else is answered from
data that ships in packages (services.collectors.gazetteer, services.collectors.geoip), so an IP
asked about is never sent anywhere. A country's location has its ISO 3166-1 alpha-2 code as value,
a point's is bev.stix.location_value(latitude, longitude). Their properties are STIX location
properties (latitude, longitude, precision in metres, city, administrative_area, region as STIX's
region-ov, country), and `name` and `country_numeric` (ISO 3166-1 numeric), which the web UI's map
reads.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any

import exifread
import trafilatura

from bev.stix import location_value
from services.collectors import gazetteer, geoip
from services.collectors.contract import CollectContext, Finding, InvalidTarget
from services.collectors.gazetteer import Country, Place
from services.collectors.observables import Observable, Relation
from services.collectors.settings import CollectorsConfig, GeoConfig

IMAGE_TYPES = ("image/jpeg", "image/tiff", "image/heic", "image/heif", "image/webp", "image/png")
HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain",)

GEOIP_CONFIDENCE = 70  # country-level GeoIP is right for most addresses, not for anycast or VPNs
EXIF_CONFIDENCE = 80  # what the camera wrote; EXIF can be edited
MENTION_CONFIDENCE = 50  # a page naming a place says little about how it relates to it
GAZETTEER_CONFIDENCE = 90
MAX_NOTE_CHARS = 20_000

_POINT = re.compile(r"\s*([-+]?\d{1,2}(?:\.\d{1,15})?)\s*,\s*([-+]?\d{1,3}(?:\.\d{1,15})?)\s*")
_OFFSET = re.compile(r"[+-]\d\d:\d\d")


@dataclass(frozen=True)
class PhotoMetadata:
    """What a photo's EXIF says about where and when, and with what, it was taken."""

    latitude: float | None = None
    longitude: float | None = None
    precision_m: float | None = None  # GPSHPositioningError
    camera_make: str = ""
    camera_model: str = ""
    taken_at: str = ""  # DateTimeOriginal, ISO 8601 (with OffsetTimeOriginal when written)
    error: str = ""  # why the EXIF could not be read


class GeoCollector:
    name = "geo"
    description = ("Locates IPs (GeoIP country and AS name), photos (EXIF GPS), and the places and coordinates "
                   "pages and notes name; resolves points and place names. Offline, but for fetching URLs")
    consumes = frozenset({"ipv4-addr", "ipv6-addr", "url", "note", "location"})
    # The data has AS names but no AS numbers (STIX's autonomous-system needs one): the name is a
    # property of the address instead.
    produces = frozenset({"location", "ipv4-addr", "ipv6-addr", "url"})
    rate_limit_per_s = 50.0  # the fetcher also limits per domain
    default_confidence = 60
    needs_network = True  # URL targets only
    needs_tor = False
    api_key_secret = ""

    def __init__(self, config: CollectorsConfig) -> None:
        self.config: GeoConfig = config.geo

    async def collect(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]:
        match target.type:
            case "ipv4-addr" | "ipv6-addr":
                findings = await asyncio.to_thread(self._ip, target)
            case "location":
                findings = await asyncio.to_thread(self._location, target)
            case "note":
                text = str(target.properties.get("content") or target.value)
                if len(text) > MAX_NOTE_CHARS:  # the note becomes a graph node: a text, not a corpus
                    raise InvalidTarget(f"a note is at most {MAX_NOTE_CHARS} characters, not {len(text)}; "
                                        "add a longer text to the corpus as a document instead")
                findings = await asyncio.to_thread(self._mentions, target, target.id, text)
            case "url":
                async for finding in self._url(target, ctx):
                    yield finding
                return
            case _:
                raise InvalidTarget(f"geo does not locate {target.type}")
        for finding in findings:
            yield finding

    def _ip(self, target: Observable) -> list[Finding]:
        try:
            found = geoip.lookup(target.value, self.config.geoip_data_file)
        except ValueError:
            raise InvalidTarget(f"{target.value!r} is not an IP address") from None
        if found is None:
            return []  # private, reserved or not in the data: nothing to say
        source = "geoip:" + geoip.data_source(self.config.geoip_data_file)
        properties: dict[str, Any] = {"network": found.network}
        if found.asn_name:
            properties |= {"asn_name": found.asn_name, "asn_network": found.asn_network}
        address = Observable(target.type, target.value, {**target.properties, **properties})
        try:
            place = country_location(gazetteer.country(found.country))
        except KeyError:  # a code the gazetteer lacks: the GeoIP data's own name
            place = Observable("location", found.country, {"name": found.country_name, "country": found.country})
        return [Finding(address, source, confidence=GEOIP_CONFIDENCE),
                Finding(place, source, (Relation(address, place, "located-at", GEOIP_CONFIDENCE),),
                        confidence=GEOIP_CONFIDENCE)]

    def _location(self, target: Observable) -> list[Finding]:
        """A point ("48.8584,2.2945", or any form coordinates_in reads) gets its nearest city; a
        name, the place or country it names."""
        source = "gazetteer:" + gazetteer.data_source()
        value = target.value.strip()
        point = _point(value)
        if point is not None:
            latitude, longitude, precision = point
            return [Finding(near_location(latitude, longitude, precision), source, confidence=GAZETTEER_CONFIDENCE)]
        country = gazetteer.find_country(value)
        if country is not None:
            return [Finding(country_location(country), source, confidence=GAZETTEER_CONFIDENCE)]
        place = gazetteer.find_place(value)
        if place is None:
            raise InvalidTarget(f"{value!r} is neither a latitude,longitude pair nor a place the gazetteer knows")
        return [Finding(city_location(place), source, confidence=GAZETTEER_CONFIDENCE)]

    def _mentions(self, origin: Observable, source: str, text: str) -> list[Finding]:
        return [Finding(place, source, (Relation(origin, place, "mentions", MENTION_CONFIDENCE),),
                        confidence=MENTION_CONFIDENCE)
                for place in text_locations(text, self.config.min_population, self.config.max_places)]

    async def _url(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]:
        fetched = await ctx.fetcher.get(target.value, investigation_id=ctx.investigation_id, opsec=ctx.opsec,
                                        accept=[*IMAGE_TYPES, *HTML_TYPES, *TEXT_TYPES])
        properties: dict[str, Any] = {"media_type": fetched.content_type}
        photo: PhotoMetadata | None = None
        if fetched.content_type in IMAGE_TYPES:
            photo = await asyncio.to_thread(read_exif, fetched.body)
            properties |= photo_properties(photo)
        page = Observable("url", fetched.url, properties)
        yield Finding(page, fetched.url)
        if fetched.url != target.value:  # redirected: the asked URL leads to the final one
            yield Finding(target, fetched.url, (Relation(target, page, "redirects-to", 90),))
        if photo is not None:
            if photo.latitude is not None and photo.longitude is not None:
                place = await asyncio.to_thread(near_location, photo.latitude, photo.longitude, photo.precision_m)
                yield Finding(place, fetched.url, (Relation(page, place, "taken-at", EXIF_CONFIDENCE),),
                              confidence=EXIF_CONFIDENCE)
            return
        body = fetched.body.decode("utf-8", "replace")
        if fetched.content_type in HTML_TYPES:
            text = await asyncio.to_thread(trafilatura.extract, body, url=fetched.url, include_comments=False)
            body = text or ""
        for finding in await asyncio.to_thread(self._mentions, page, fetched.url, body):
            yield finding


# --- locations -----------------------------------------------------------------------------------

def country_location(country: Country) -> Observable:
    properties = {"name": country.name, "country": country.code, "country_numeric": country.numeric,
                  "region": country.stix_region}
    return Observable("location", country.code, {key: value for key, value in properties.items() if value})


def point_location(latitude: float, longitude: float, place: Place, name: str,
                   more: Mapping[str, Any] | None = None) -> Observable:
    """A point, with what the gazetteer says about the city at or near it."""
    try:
        region = gazetteer.country(place.country).stix_region
    except KeyError:
        region = ""
    properties: dict[str, Any] = {
        "latitude": round(latitude, 6), "longitude": round(longitude, 6), "name": name, "city": place.name,
        "administrative_area": place.region, "region": region, "country": place.country,
        "country_numeric": place.country_numeric, **(more or {})}
    return Observable("location", location_value(latitude, longitude),
                      {key: value for key, value in properties.items() if value not in ("", None)})


def near_location(latitude: float, longitude: float, precision_m: float | None = None) -> Observable:
    """A point someone gave, named after the city nearest it."""
    place = gazetteer.nearest_place(latitude, longitude)
    more: dict[str, Any] = {"x_distance_km": place.distance_km}
    if precision_m:
        more["precision"] = round(precision_m, 1)
    return point_location(latitude, longitude, place, f"near {place.name}, {place.country}", more)


def city_location(place: Place) -> Observable:
    if place.kind == "country":
        return country_location(gazetteer.country(place.country))
    return point_location(place.latitude, place.longitude, place, place.name, {"population": place.population})


def text_locations(text: str, min_population: int, max_places: int) -> list[Observable]:
    """The distinct locations a text names: its coordinates first (the most precise), then its
    cities and countries, at most `max_places`."""
    found: dict[str, Observable] = {}
    for coordinate in gazetteer.coordinates_in(text):
        place = near_location(coordinate.latitude, coordinate.longitude, coordinate.precision_m)
        found.setdefault(place.value, place)
        if len(found) >= max_places:
            return list(found.values())
    for mention in gazetteer.places_in(text, min_population):
        place = city_location(mention.place) if mention.place else country_location(mention.country)
        found.setdefault(place.value, place)
        if len(found) >= max_places:
            break
    return list(found.values())


def _point(value: str) -> tuple[float, float, float | None] | None:
    """(latitude, longitude, precision in metres) when the value is a point, in any form."""
    match = _POINT.fullmatch(value)
    if match is not None:
        latitude, longitude = float(match[1]), float(match[2])
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise InvalidTarget(f"{value!r}: latitude must be within ±90 and longitude within ±180")
        decimals = min(len(number.partition(".")[2]) for number in (match[1], match[2]))
        return latitude, longitude, gazetteer.METRES_PER_DEGREE * 10.0 ** -decimals
    mentions = gazetteer.coordinates_in(value)
    if len(mentions) == 1 and mentions[0].text == value:
        return mentions[0].latitude, mentions[0].longitude, mentions[0].precision_m
    return None


# --- EXIF ----------------------------------------------------------------------------------------

def read_exif(data: bytes) -> PhotoMetadata:
    """A photo's GPS position, camera and time from its EXIF (JPEG, TIFF, HEIC, WebP, PNG)."""
    try:
        tags: dict[str, Any] = exifread.process_file(io.BytesIO(data), details=False, extract_thumbnail=False)
    except Exception as exc:  # a hostile file can break the parser in any way: report it, do not fail
        return PhotoMetadata(error=f"unreadable EXIF: {type(exc).__name__}: {exc}"[:200])
    latitude = _degrees(tags.get("GPS GPSLatitude"), _text(tags.get("GPS GPSLatitudeRef")), "S", 90)
    longitude = _degrees(tags.get("GPS GPSLongitude"), _text(tags.get("GPS GPSLongitudeRef")), "W", 180)
    if latitude is None or longitude is None or (latitude == 0 and longitude == 0):  # 0,0: no fix
        latitude = longitude = None
    error = tags.get("GPS GPSHPositioningError") or tags.get("GPS Tag 0x001F")
    precision = _number(error.values[0]) if error is not None and getattr(error, "values", None) else None
    return PhotoMetadata(latitude, longitude, precision, _text(tags.get("Image Make")),
                         _text(tags.get("Image Model")),
                         _taken_at(_text(tags.get("EXIF DateTimeOriginal")), _text(tags.get("EXIF OffsetTimeOriginal"))))


def photo_properties(photo: PhotoMetadata) -> dict[str, Any]:
    properties = {"camera_make": photo.camera_make, "camera_model": photo.camera_model,
                  "taken_at": photo.taken_at, "exif_error": photo.error}
    return {key: value for key, value in properties.items() if value}


def _text(tag: Any) -> str:
    values = getattr(tag, "values", None)
    if isinstance(values, bytes):
        values = values.decode("utf-8", "replace")
    return values.strip(" \x00") if isinstance(values, str) else ""


def _number(value: Any) -> float | None:
    """A rational as a float; None for a zero denominator or anything else."""
    if isinstance(value, Fraction):
        return None if value.denominator == 0 else float(value)  # exifread keeps n/0 as written
    if isinstance(value, int | float):
        return float(value)
    return None


def _degrees(tag: Any, ref: str, negative: str, limit: float) -> float | None:
    """Degrees, minutes, seconds rationals, signed by their reference (N/S, E/W): a missing
    reference reads as north or east."""
    values = getattr(tag, "values", None)
    if not isinstance(values, list) or not 1 <= len(values) <= 3:
        return None
    total = 0.0
    for value, scale in zip(values, (1, 60, 3600), strict=False):
        number = _number(value)
        if number is None or number < 0:
            return None
        total += number / scale
    if total > limit:
        return None
    return -total if ref.upper().startswith(negative) else total


def _taken_at(original: str, offset: str) -> str:
    try:
        moment = datetime.strptime(original, "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return ""
    return moment.isoformat() + (offset if _OFFSET.fullmatch(offset) else "")
