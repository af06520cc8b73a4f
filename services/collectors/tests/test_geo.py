"""The geo collector through the real Collection (graph and observations stored), against photos and
pages served by the HTTP fixture, and the gazetteer and GeoIP data it ships with."""

from __future__ import annotations

import io
import json
import time
import uuid
from typing import Any

import pytest
from PIL import Image
from PIL.ExifTags import GPS, IFD, Base
from PIL.TiffImagePlugin import IFDRational
from stix2validator import ValidationOptions, validate_instance

from bev.stix import location_value
from services.collectors import gazetteer, geoip
from services.collectors.builtin.geo import GeoCollector
from services.collectors.collection import Collection, CollectionRequest, StoredFinding
from services.collectors.contract import Collector, InvalidTarget
from services.collectors.observables import Observable, bundle, to_stix_object, to_stix_relationship
from services.collectors.testing import HttpFixture

# What the web UI's map reads from a location.
MAP_KEYS = {"latitude", "longitude", "country", "country_numeric", "name"}


async def _collect(collection: Collection, kind: str, value: str) -> list[StoredFinding]:
    request = CollectionRequest("geo", Observable(kind, value), investigation_id="geo-" + uuid.uuid4().hex[:6])
    return [stored async for stored in collection.run(request)]


def _locations(found: list[StoredFinding]) -> dict[str, dict[str, Any]]:
    return {s.entity.value: json.loads(s.entity.props) for s in found if s.entity.type == "location"}


def _edges(found: list[StoredFinding]) -> set[tuple[str, str, str]]:
    return {(r.source_id, r.type, r.target_id) for s in found for r in s.relations}


def _dms(degrees: int, minutes: int, seconds: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    return IFDRational(degrees), IFDRational(minutes), IFDRational(round(seconds * 10), 10)


def _jpeg(gps: dict[int, Any] | None = None, **base: str) -> bytes:
    """An 8x8 JPEG with these GPS tags and base tags (Make, Model, DateTimeOriginal, OffsetTimeOriginal)."""
    exif = Image.Exif()
    for name in ("Make", "Model"):
        if name in base:
            exif[Base[name]] = base[name]
    for name in ("DateTimeOriginal", "OffsetTimeOriginal"):
        if name in base:
            exif.get_ifd(IFD.Exif)[Base[name]] = base[name]
    if gps:
        exif.get_ifd(IFD.GPSInfo).update(gps)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def test_geo_satisfies_the_contract(collection: Collection) -> None:
    geo = collection.collector("geo")
    assert isinstance(geo, Collector) and isinstance(geo, GeoCollector)
    assert geo.consumes == {"ipv4-addr", "ipv6-addr", "url", "note", "location"}
    assert "location" in geo.produces


async def test_photo_exif_gps_is_where_it_was_taken(collection: Collection, http_fixture: HttpFixture) -> None:
    # The Eiffel tower: 48°51'29.6"N 2°17'40.2"E.
    eiffel = http_fixture.serve("/geo/eiffel.jpg", _jpeg(
        {GPS.GPSLatitudeRef: "N", GPS.GPSLatitude: _dms(48, 51, 29.6),
         GPS.GPSLongitudeRef: "E", GPS.GPSLongitude: _dms(2, 17, 40.2)},
        Make="Canon", Model="Canon EOS R6", DateTimeOriginal="2024:06:18 14:03:12", OffsetTimeOriginal="+02:00"),
        "image/jpeg")
    found = await _collect(collection, "url", eiffel)
    photo = found[0]
    assert (photo.entity.type, photo.entity.value) == ("url", eiffel)
    assert json.loads(photo.entity.props) == {"media_type": "image/jpeg", "camera_make": "Canon",
                                              "camera_model": "Canon EOS R6", "taken_at": "2024-06-18T14:03:12+02:00"}
    latitude, longitude = 48 + 51 / 60 + 29.6 / 3600, 2 + 17 / 60 + 40.2 / 3600
    value = location_value(latitude, longitude)
    assert value == "48.8582,2.2945"
    place = _locations(found)
    assert set(place) == {value}
    props = place[value]
    assert MAP_KEYS <= set(props)
    assert props["latitude"] == pytest.approx(latitude, abs=1e-6)
    assert props["longitude"] == pytest.approx(longitude, abs=1e-6)
    assert (props["name"], props["city"], props["country"], props["country_numeric"], props["region"]) == (
        "near Paris, FR", "Paris", "FR", "250", "europe")
    assert 3 < props["x_distance_km"] < 5  # from Paris's GeoNames point, by the Hôtel de Ville
    point = Observable("location", value)
    assert (Observable("url", eiffel).id, "taken-at", point.id) in _edges(found)
    stored = await collection.graph.get_entity(point.id)
    assert stored is not None and json.loads(stored.props)["country_numeric"] == "250"
    assert [o.confidence for o in await collection.observations.for_entity(point.id)] == [80]

    # Southern and western references, and the receiver's stated accuracy: Christ the Redeemer.
    rio = http_fixture.serve("/geo/rio.jpg", _jpeg(
        {GPS.GPSLatitudeRef: "S", GPS.GPSLatitude: _dms(22, 57, 7.7),
         GPS.GPSLongitudeRef: "W", GPS.GPSLongitude: _dms(43, 12, 38.6),
         GPS.GPSHPositioningError: IFDRational(5, 1)}), "image/jpeg")
    place = _locations(await _collect(collection, "url", rio))
    assert list(place) == [location_value(-(22 + 57 / 60 + 7.7 / 3600), -(43 + 12 / 60 + 38.6 / 3600))]
    props = next(iter(place.values()))
    assert (props["city"], props["country"], props["country_numeric"], props["precision"]) == (
        "Rio de Janeiro", "BR", "076", 5.0)


async def test_photos_without_a_usable_position_have_no_location(collection: Collection,
                                                                 http_fixture: HttpFixture) -> None:
    photos = {
        "/geo/plain.jpg": _jpeg(),  # no EXIF at all
        "/geo/camera-only.jpg": _jpeg(Make="Nikon"),
        "/geo/latitude-only.jpg": _jpeg({GPS.GPSLatitudeRef: "N", GPS.GPSLatitude: _dms(48, 51, 29.6)}),
        "/geo/no-fix.jpg": _jpeg({GPS.GPSLatitudeRef: "N", GPS.GPSLatitude: _dms(0, 0, 0),
                                  GPS.GPSLongitudeRef: "E", GPS.GPSLongitude: _dms(0, 0, 0)}),
    }
    for path, body in photos.items():
        found = await _collect(collection, "url", http_fixture.serve(path, body, "image/jpeg"))
        assert [s.entity.type for s in found] == ["url"], path
        assert not _edges(found)
    camera = await _collect(collection, "url", http_fixture.url("/geo/camera-only.jpg"))
    assert json.loads(camera[0].entity.props) == {"media_type": "image/jpeg", "camera_make": "Nikon"}


REPORT = """Field report, filed from Lyon.
The courier crossed from Germany into Poland, then met the handler at 48.8584, 2.2945 (by the tower)
and again at 33°51'24"S 151°12'55"E. The drop was in Nice, France; nice view.
Nice weather too in Reading, where the team rested.
Tooling: agent version 2.4.1, build 10.15.7, Python 3.11, 3.12; beacons to 81.2.69.160 and 192.168.10.20.
Call +33 1 44 11 23 23 or 555.123.4567. Paid 12.50, 13.75 for the SIM."""

# Exactly these: the two coordinates, Lyon, Germany, Poland and Nice (France). Not the versions,
# the addresses, the phone numbers, the prices, "Nice weather", nor Reading, where the team rested.
REPORT_LOCATIONS = {
    "48.8584,2.2945": ("near Paris, FR", "FR"),
    location_value(-(33 + 51 / 60 + 24 / 3600), 151 + 12 / 60 + 55 / 3600): ("near Sydney, AU", "AU"),
    "45.7491,4.8479": ("Lyon", "FR"),
    "DE": ("Germany", "DE"),
    "PL": ("Poland", "PL"),
    "43.7031,7.2661": ("Nice", "FR"),
}


@pytest.mark.parametrize(("path", "body", "content_type"), [
    ("/geo/report.txt", REPORT, "text/plain"),
    ("/geo/report.html", "<html><head><title>Field report</title></head><body><nav>Home</nav><article>"
     + "".join(f"<p>{line}</p>" for line in REPORT.splitlines()) + "</article></body></html>", "text/html"),
])
async def test_places_and_coordinates_in_a_page(collection: Collection, http_fixture: HttpFixture, path: str,
                                                body: str, content_type: str) -> None:
    url = http_fixture.serve(path, body, f"{content_type}; charset=utf-8")
    found = await _collect(collection, "url", url)
    places = _locations(found)
    assert {value: (props["name"], props["country"]) for value, props in places.items()} == REPORT_LOCATIONS
    page = Observable("url", url)
    assert {(page.id, "mentions", Observable("location", value).id) for value in REPORT_LOCATIONS} == _edges(found)
    assert places["48.8584,2.2945"]["precision"] == 11.1
    assert places["DE"] == {"name": "Germany", "country": "DE", "country_numeric": "276", "region": "europe"}
    assert all(MAP_KEYS <= set(props) for value, props in places.items() if "," in value)
    assert {s.observation.confidence for s in found if s.entity.type == "location"} == {50}


async def test_a_note_is_read_for_places(collection: Collection) -> None:
    text = "Safe house near Kraków, meeting in Warsaw; fallback at 52.2297° N, 21.0122° E. Nothing in Mobile."
    found = await _collect(collection, "note", text)
    note = Observable("note", text)
    places = _locations(found)
    assert {value: props["name"] for value, props in places.items()} == {
        "52.2297,21.0122": "near Warsaw, PL", "50.0614,19.9366": "Kraków", "52.2298,21.0118": "Warsaw"}
    assert _edges(found) == {(note.id, "mentions", Observable("location", value).id) for value in places}
    assert {s.observation.source for s in found} == {note.id}


async def test_a_location_target_is_a_point_or_a_name(collection: Collection) -> None:
    found = await _collect(collection, "location", "48.8584, 2.2945")
    assert _locations(found) == {"48.8584,2.2945": {
        "latitude": 48.8584, "longitude": 2.2945, "name": "near Paris, FR", "city": "Paris",
        "administrative_area": "FR.11", "region": "europe", "country": "FR", "country_numeric": "250",
        "x_distance_km": pytest.approx(4.011, abs=0.01), "precision": 11.1}}
    assert found[0].observation.source == "gazetteer:" + gazetteer.data_source()

    dms = _locations(await _collect(collection, "location", "33°51'24\"S 151°12'55\"E"))
    assert [(props["city"], props["country"], props["precision"]) for props in dms.values()] == [
        ("Sydney", "AU", 30.9)]

    paris = _locations(await _collect(collection, "location", "Paris, France"))
    assert list(paris) == ["48.8534,2.3488"]
    assert {key: paris["48.8534,2.3488"][key] for key in ("name", "city", "country", "country_numeric")} == {
        "name": "Paris", "city": "Paris", "country": "FR", "country_numeric": "250"}
    texas = _locations(await _collect(collection, "location", "paris, texas"))
    assert [(props["city"], props["administrative_area"], props["country"]) for props in texas.values()] == [
        ("Paris", "Texas", "US")]
    assert _locations(await _collect(collection, "location", "Japan")) == {
        "JP": {"name": "Japan", "country": "JP", "country_numeric": "392", "region": "asia"}}
    assert list(_locations(await _collect(collection, "location", "FR"))) == ["FR"]

    with pytest.raises(InvalidTarget, match="place the gazetteer knows"):
        await _collect(collection, "location", "Atlantis-under-the-sea")
    with pytest.raises(InvalidTarget, match="latitude must be within"):
        await _collect(collection, "location", "95.0,10.0")


@pytest.mark.parametrize(("ip", "country", "numeric", "region", "network", "asn_name", "asn_network"), [
    ("8.8.8.8", "US", "840", "americas", "8.8.0.0/15", "GOOGLE", "8.8.8.0/24"),
    # RIPE NCC's own address, in Amsterdam.
    ("193.0.6.139", "NL", "528", "europe", "193.0.0.0/20",
     "Reseaux IP Europeens Network Coordination Centre (RIPE NCC)", "193.0.0.0/21"),
    ("2a00:1450:4001:80b::200e", "DE", "276", "europe", "2a00:1450:4001::/48", "GOOGLE", "2a00:1450::/32"),
])
async def test_public_addresses_are_located_by_the_shipped_geoip_data(
        collection: Collection, ip: str, country: str, numeric: str, region: str, network: str, asn_name: str,
        asn_network: str) -> None:
    kind = "ipv6-addr" if ":" in ip else "ipv4-addr"
    found = await _collect(collection, kind, ip)
    address = Observable(kind, ip)
    assert [(s.entity.type, s.entity.value) for s in found] == [(kind, ip), ("location", country)]
    assert json.loads(found[0].entity.props) == {"network": network, "asn_name": asn_name, "asn_network": asn_network}
    props = json.loads(found[1].entity.props)
    assert (props["country"], props["country_numeric"], props["region"]) == (country, numeric, region)
    assert _edges(found) == {(address.id, "located-at", Observable("location", country).id)}
    source = found[0].observation.source
    assert source == "geoip:" + geoip.data_source()
    assert source.startswith("geoip:MaxMind GeoLite2-") and "2024-06-18" in source and "geoip2fast 1.2.2" in source
    assert {s.observation.confidence for s in found} == {70}


@pytest.mark.parametrize(("kind", "ip"), [
    ("ipv4-addr", "10.0.0.1"), ("ipv4-addr", "192.168.1.1"), ("ipv4-addr", "127.0.0.1"),
    ("ipv4-addr", "100.64.0.1"), ("ipv4-addr", "203.0.113.7"), ("ipv6-addr", "fe80::1"), ("ipv6-addr", "::1"),
])
async def test_private_and_reserved_addresses_yield_nothing(collection: Collection, kind: str, ip: str) -> None:
    assert await _collect(collection, kind, ip) == []


async def test_not_an_address_is_an_invalid_target(collection: Collection) -> None:
    with pytest.raises(InvalidTarget, match="not an IP address"):
        await _collect(collection, "ipv4-addr", "999.1.1.1")


async def test_adversarial_text_is_read_in_linear_time(collection: Collection) -> None:
    gazetteer.country("FR")
    gazetteer.places_in("Paris", 100_000)  # loaded before the clock starts
    hostile = ["1" * 100_000, "." * 100_000, "1.2." * 25_000, "1.11," * 20_000, "48°51'" * 15_000,
               "N 1.11, " * 12_000, "Paris, " * 15_000, "New " * 25_000, "Hong" + " " * 100_000 + "Kong",
               "1." + "2" * 100_000 + ", 3.45"]
    for text in hostile:
        started = time.perf_counter()
        gazetteer.coordinates_in(text)
        gazetteer.places_in(text, 100_000)
        assert time.perf_counter() - started < 2.0, text[:20]
    # Through the collector: the hostile runs are skipped, the one real position is found.
    started = time.perf_counter()
    found = await _collect(collection, "note", "9" * 9_000 + " " + "." * 9_000 + " at 48.8584, 2.2945.")  # under the note limit
    assert time.perf_counter() - started < 10.0
    assert list(_locations(found)) == ["48.8584,2.2945"]


def test_gazetteer_lookups() -> None:
    assert gazetteer.country("fr").numeric == "250" and gazetteer.country("US").numeric == "840"
    with pytest.raises(KeyError):
        gazetteer.country("ZZ")
    assert gazetteer.nearest_place(-33.8688, 151.2093).name == "Sydney"
    versailles = gazetteer.nearest_place(48.8049, 2.1204)  # a suburb stays itself
    assert (versailles.name, versailles.country) == ("Versailles", "FR")
    paris_fr = gazetteer.find_place("Paris, FR")
    assert paris_fr is not None and (paris_fr.country, paris_fr.country_name) == ("FR", "France")
    assert gazetteer.find_place("PARIS") == paris_fr
    sao_paulo = gazetteer.find_place("sao paulo")
    assert sao_paulo is not None and sao_paulo.name == "São Paulo"
    luxembourg = gazetteer.find_place("Luxembourg")
    assert luxembourg is not None and (luxembourg.kind, luxembourg.country) == ("country", "LU")
    assert gazetteer.find_place("Nowhere-on-Sea") is None
    text = "Nice, France and Reading, PA; New Jersey and New Mexico; Mexico City; Nice weather in Reading."
    assert [(m.text, m.country.code, m.place.region if m.place else "") for m in gazetteer.places_in(text, 100_000)] == [
        ("Nice, France", "FR", "FR.93"), ("Reading, PA", "US", "Pennsylvania"), ("New Jersey", "US", ""),
        ("New Mexico", "US", ""), ("Mexico City", "MX", "MX.09")]
    # primes (\u2032, \u2033) as well as quotes
    spans = gazetteer.coordinates_in("at 48.8584, 2.2945 or 48°51\u203229.6\u2033N, 2°17\u203240.2\u2033E; not 10.0.0.1, 2.4.1")
    assert [(m.start, m.end, round(m.latitude, 4), round(m.longitude, 4)) for m in spans] == [
        (3, 18, 48.8584, 2.2945), (22, 47, 48.8582, 2.2945)]


async def test_stix_export_of_locations_validates(collection: Collection, http_fixture: HttpFixture) -> None:
    found = await _collect(collection, "ipv4-addr", "193.0.6.139")
    found += await _collect(collection, "url", http_fixture.serve("/geo/stix.txt", REPORT, "text/plain"))
    ids = [s.entity.id for s in found]
    graph = await collection.graph.subgraph(ids, 1, 1000)
    created = "2024-06-18T00:00:00.000Z"
    objects = [to_stix_object(e.id, e.type, e.value, json.loads(e.props), created) for e in graph.entities]
    objects += [to_stix_relationship(r.id, r.source_id, r.type, r.target_id, r.confidence, created)
                for r in graph.relations]
    locations = {o["id"]: o for o in objects if o["type"] == "location"}
    assert set(locations) == {Observable("location", value).id for value in {"NL", *REPORT_LOCATIONS}}
    point = locations[Observable("location", "48.8584,2.2945").id]
    assert {key: point[key] for key in ("latitude", "longitude", "country", "region", "city", "precision")} == {
        "latitude": 48.8584, "longitude": 2.2945, "country": "FR", "region": "europe", "city": "Paris",
        "precision": 11.1}
    result = validate_instance(bundle(objects), ValidationOptions(version="2.1"))
    assert result.is_valid, [str(e) for e in result.errors]
    assert not [str(w) for w in result.warnings if "region" in str(w) or "country" in str(w)]


async def test_a_note_longer_than_the_limit_is_refused(collection: Collection) -> None:
    with pytest.raises(InvalidTarget, match="at most 20000 characters"):
        async for _ in collection.run(CollectionRequest("geo", Observable("note", "Paris " * 4000))):
            pass
