"""IP address -> country, offline, from the MaxMind GeoLite2 data geoip2fast ships (or a newer file).

The default file, geoip2fast-asn-ipv6.dat.gz, holds IPv4 and IPv6 networks with their country and
their AS's name (MaxMind GeoLite2 Country and ASN, 2024-06-18 in geoip2fast 1.2.2); AS numbers are
not in it, only names. A configured file must be a geoip2fast .dat.gz: it is unpickled, so it must
come from the operator, never from a collected source.

geoip2fast keeps the loaded database in module globals: one database per process. Loading (about a
second) and lookups are serialised behind one lock, and a lookup against another file reloads.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any


def _import_geoip2fast() -> Any:
    # Importing geoip2fast sets PYTHONWARNINGS=ignore and PYTHONIOENCODING in os.environ, which every
    # subprocess this one starts would inherit: put them back as they were.
    saved = {key: os.environ.get(key) for key in ("PYTHONWARNINGS", "PYTHONIOENCODING")}
    try:
        import geoip2fast
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return geoip2fast


_geoip2fast = _import_geoip2fast()
DEFAULT_DATA_FILE = Path(_geoip2fast.__file__).parent / "geoip2fast-asn-ipv6.dat.gz"


@dataclass(frozen=True)
class IpLocation:
    ip: str
    country: str  # ISO 3166-1 alpha-2
    country_name: str  # as the data names it
    network: str  # the CIDR the country answer covers
    asn_name: str = ""  # the AS announcing it, by name ("" where the data has none)
    asn_network: str = ""


_lock = threading.Lock()
_database: tuple[Path, Any] | None = None


def _loaded(data_file: Path | None) -> Any:
    """The GeoIP2Fast reader over `data_file`; call with _lock held."""
    global _database
    path = (data_file or DEFAULT_DATA_FILE).resolve()
    if _database is None or _database[0] != path:
        if not path.is_file():
            raise FileNotFoundError(f"GeoIP data file {path} does not exist")
        _database = (path, _geoip2fast.GeoIP2Fast(geoip2fast_data_file=str(path)))
    return _database[1]


def data_source(data_file: Path | None = None) -> str:
    """The data's vendor, edition and date, and the reader: "MaxMind GeoLite2-CountryASN-IPv4IPv6-en
    2024-06-18 via geoip2fast 1.2.2"."""
    with _lock:
        info = str(_loaded(data_file).source_info)  # "MAXMIND:GeoLite2-CountryASN-IPv4IPv6-en-20240618"
    vendor, _, edition = info.partition(":")
    name, _, stamp = edition.rpartition("-")
    if len(stamp) == 8 and stamp.isdigit():
        edition = f"{name} {stamp[:4]}-{stamp[4:6]}-{stamp[6:]}"
    vendor = {"MAXMIND": "MaxMind"}.get(vendor, vendor)
    return f"{vendor} {edition} via geoip2fast {version('geoip2fast')}"


def lookup(ip: str, data_file: Path | None = None) -> IpLocation | None:
    """Where the data places a public address; None for a private, reserved or unlisted one.
    ValueError when `ip` is not an IP address."""
    address = ipaddress.ip_address(ip.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:192.0.2.1 is an IPv4 address
    if not address.is_global:
        return None
    with _lock:
        result = _loaded(data_file).lookup(str(address))
    code = str(result.country_code)
    # "--": private or not found; "": invalid or an internal error; both are reported, not raised.
    if result.is_private or len(code) != 2 or not code.isalpha():
        return None
    asn_name = str(result.asn_name or "")
    if asn_name.startswith("<"):  # "<unknown>"
        asn_name = ""
    return IpLocation(str(address), code, str(result.country_name), str(result.cidr), asn_name,
                      str(result.asn_cidr or "") if asn_name else "")
