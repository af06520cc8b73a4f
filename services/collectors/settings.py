from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from bev.settings import BevSettings
from bev.vocab import Tlp


class FetchConfig(BaseModel):
    """How collectors reach the web: the SSRF guard, limits, robots.txt, Tor."""

    max_bytes: int = 5 * 1024 * 1024  # a body larger than this is refused, not truncated
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    total_timeout_s: float = 30.0
    max_redirects: int = 5
    content_types: list[str] = [
        "text/html", "application/xhtml+xml", "text/plain", "text/markdown", "application/json",
        "application/rss+xml", "application/atom+xml", "application/xml", "text/xml",
        "application/stix+json", "application/taxii+json", "application/pdf",
    ]
    # CIDRs the SSRF guard lets through although they are not public (tests: 127.0.0.0/8).
    allow_ranges: list[str] = []
    # Resolver the guard asks (host:port strings); empty = the system resolver.
    nameservers: list[str] = []
    user_agent: str = "BEV-collector/0.1 (+https://github.com/bev; OSINT research)"
    respect_robots: bool = True
    per_domain_rate_per_s: float = 2.0
    # Tor's SOCKS5 port. .onion and OPSEC investigations go only through it; empty = no Tor.
    tor_socks_url: str = "socks5://127.0.0.1:9050"


class DnsConfig(BaseModel):
    nameservers: list[str] = ["1.1.1.1"]  # host or host:port
    timeout_s: float = 5.0
    record_types: list[str] = ["A", "AAAA", "MX", "NS", "TXT", "CNAME"]


class WhoisConfig(BaseModel):
    server: str = "whois.iana.org:43"  # RFC 3912 server (host:port); referrals are followed once
    timeout_s: float = 10.0
    max_bytes: int = 256 * 1024


class BitcoinConfig(BaseModel):
    esplora_url: str = "https://blockstream.info/api"
    max_depth: int = Field(default=2, ge=0, le=5)  # hops of counterparties traced from the target
    max_fanout: int = Field(default=10, ge=1)  # counterparties followed per address
    max_addresses: int = Field(default=100, ge=1)  # addresses visited in one trace at most
    rate_limit_per_s: float = 5.0


class EthereumConfig(BaseModel):
    rpc_url: str = "https://cloudflare-eth.com"  # Ethereum JSON-RPC endpoint
    rate_limit_per_s: float = 5.0


class PolledSource(BaseModel):
    """A source the beat polls: a feed, or a TAXII 2.1 collection URL (.../collections/<id>/)."""

    name: str
    url: str
    interval_s: float = Field(default=3600.0, gt=0)
    tlp: Tlp = Tlp.CLEAR


class MalwareConfig(BaseModel):
    """Static analysis of files (services/collectors/builtin/malware.py): nothing is ever executed."""

    # Where uploaded and downloaded files are kept, named by SHA-256, mode 0400 (never executable);
    # None: <data_dir>/quarantine.
    quarantine_dir: Path | None = None
    # Larger files are refused. Uploads reach the service in one RPC (at most 4 MiB), downloads
    # through the fetcher (fetch.max_bytes): this is the ceiling over both.
    max_file_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    rules_dirs: list[Path] = []  # the operator's own YARA rules (*.yar, *.yara), besides the repository's
    yara_timeout_s: int = Field(default=10, ge=1)
    min_string_length: int = Field(default=6, ge=4)  # printable runs read as strings (ASCII and UTF-16LE)
    max_strings: int = Field(default=20_000, ge=1)  # scanned for indicators at most


class SocialConfig(BaseModel):
    """Public social-media APIs (services/collectors/builtin/social.py); no account or key needed."""

    # A fediverse account @user@instance is looked up at this base URL ({instance}: its host).
    mastodon_base_url: str = "https://{instance}"
    bluesky_api_url: str = "https://public.api.bsky.app"  # an AT Protocol AppView (public, read-only)
    max_posts: int = Field(default=40, ge=1, le=100)  # recent public posts read per account
    rate_limit_per_s: float = 2.0


class GeoConfig(BaseModel):
    """Offline geolocation (services/collectors/builtin/geo.py): gazetteer and GeoIP data ship in packages."""

    # Place names in text: cities of at least this population (smaller ones are mostly common words
    # or ambiguous), and countries by name.
    min_population: int = Field(default=100_000, ge=15_000)
    max_places: int = Field(default=50, ge=1)  # locations reported per text at most
    # A newer geoip2fast data file (country or city+ASN); None: the one the package ships.
    geoip_data_file: Path | None = None


class GraphConfig(BaseModel):
    backend: Literal["falkordb", "neo4j"] = "falkordb"
    name: str = "bev"  # FalkorDB graph key / Neo4j database ("" = the server's default there)
    neo4j_uri: str = ""  # with backend=neo4j; credentials from the Vault secret "neo4j"
    batch_size: int = 1000  # rows per UNWIND
    # Every read query's time limit, enforced by the engine (FalkorDB's query timeout, a Neo4j
    # transaction timeout): past it GraphQuery answers INVALID_ARGUMENT and the engine is free again.
    query_timeout_ms: int = 5000
    max_rows: int = 1000  # GraphQuery never returns more; the engine stops producing rows past the limit asked
    max_neighborhood: int = 1000


class CeleryConfig(BaseModel):
    # Broker and result backend come from the Vault secret "redis" unless set here.
    broker_url: str = ""
    result_expires_s: int = 86400
    # A task whose worker died unacknowledged is handed out again after this long; keep it above
    # the longest collection (a live worker's task is never redelivered before it).
    visibility_timeout_s: int = 3600
    pool: Literal["prefork", "solo", "threads"] = "prefork"
    concurrency: int = 2


class CollectorsConfig(BaseModel):
    max_extract_bytes: int = 2 * 1024 * 1024  # text larger than this is refused, not truncated
    scrub_pii: bool = False  # scrub emails, phones, cards and SSNs from stored text by default
    default_tlp: Tlp = Tlp.CLEAR  # for a CollectRequest without one (TLP_UNSPECIFIED)
    # Hand collected documents (web pages) to the embeddings service's corpus during collection.
    send_documents: bool = True
    fetch: FetchConfig = FetchConfig()
    dns: DnsConfig = DnsConfig()
    whois: WhoisConfig = WhoisConfig()
    bitcoin: BitcoinConfig = BitcoinConfig()
    ethereum: EthereumConfig = EthereumConfig()
    malware: MalwareConfig = MalwareConfig()
    social: SocialConfig = SocialConfig()
    geo: GeoConfig = GeoConfig()
    feeds: list[PolledSource] = []  # RSS/Atom, read by the feed collector
    taxii: list[PolledSource] = []  # STIX bundles / TAXII 2.1 collections, read by the taxii collector
    graph: GraphConfig = GraphConfig()
    celery: CeleryConfig = CeleryConfig()


class Settings(BevSettings):
    collectors: CollectorsConfig = CollectorsConfig()

    @model_validator(mode="after")
    def _quarantine_in_data_dir(self) -> "Settings":
        if self.collectors.malware.quarantine_dir is None:
            self.collectors.malware.quarantine_dir = self.data_dir / "quarantine"
        return self
