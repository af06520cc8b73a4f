"""Small, realistic documents of every format the corpus reads, built here (nothing downloaded)."""

from __future__ import annotations

import json


def pdf(pages: list[list[str]], title: str) -> bytes:
    """A valid PDF 1.4 with one Helvetica text line per entry, pages in order, and a title."""

    def escape(line: str) -> str:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects: list[bytes] = []
    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{i} 0 R" for i in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for page_id, lines in zip(page_ids, pages, strict=True):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {page_id + 1} 0 R >>".encode()
        )
        body = "BT /F1 11 Tf 14 TL 72 720 Td " + " ".join(f"({escape(line)}) Tj T*" for line in lines) + " ET"
        stream = body.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(f"<< /Title ({escape(title)}) /Producer (bev tests) >>".encode())
    info_id = len(objects)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body_bytes in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body_bytes + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, info_id, xref)
    return bytes(out)


PDF_PAGES = [
    ["Quarterly threat summary.", "The Lazarus Group targeted cryptocurrency exchanges with trojanised trading apps."],
    ["Page two.", "Stolen funds were laundered through mixers and cross-chain bridges."],
]

HTML = """<!doctype html>
<html><head><title>Sandworm strikes the grid again</title></head>
<body>
<nav><a href="/">Home</a> | <a href="/news">News</a> | <a href="/about">About us</a> | Subscribe now!</nav>
<article>
<h1>Sandworm strikes the grid again</h1>
<p>Analysts attributed the outage to Sandworm, a unit long associated with attacks on Ukrainian energy
infrastructure. The intruders used a new variant of the Industroyer malware to open breakers at
three substations, cutting power to about 80,000 customers for several hours.</p>
<p>The operators gained access months earlier through a compromised VPN appliance, then moved
laterally to the SCADA network. Investigators found wiper malware staged to destroy evidence after
the attack, a pattern seen in the group's earlier operations.</p>
<p>Utilities were urged to patch edge devices, segment operational networks and monitor for
unusual use of IEC-104 commands, which the malware speaks natively.</p>
</article>
<footer>Copyright 2026 Example News. All rights reserved. Cookie settings. Privacy policy.</footer>
</body></html>
"""

MARKDOWN = """# Volt Typhoon field notes

Volt Typhoon relies on **living-off-the-land** techniques: built-in tools such as `netsh`,
`wmic` and `ntdsutil` instead of custom malware.

## Infrastructure

The actor routes traffic through compromised SOHO routers to blend in with normal traffic.
"""

TEXT = (
    "Indicator sweep, 14 March.\r\n\r\n\r\n"
    "The phishing kit harvested Microsoft 365 credentials   and relayed MFA tokens in real time.\t\n"
    "Domains rotated daily.\n"
)


def stix_bundle() -> bytes:
    return json.dumps({
        "type": "bundle",
        "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
        "objects": [
            {"type": "report", "spec_version": "2.1", "id": "report--84e4d88f-44ea-4bcd-bbf3-b2c1c320bcb3",
             "name": "APT28 credential phishing campaign", "published": "2026-10-01T00:00:00Z",
             "description": "APT28 sent spearphishing emails impersonating a webmail provider to defence ministries.",
             "object_refs": ["intrusion-set--bef4c620-0787-42a8-a96d-b7eb6e85917c"]},
            {"type": "intrusion-set", "spec_version": "2.1", "id": "intrusion-set--bef4c620-0787-42a8-a96d-b7eb6e85917c",
             "name": "APT28", "description": "APT28 is a threat group attributed to Russia's GRU unit 26165."},
            {"type": "indicator", "spec_version": "2.1", "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
             "name": "Phishing domain", "pattern": "[domain-name:value = 'mail-verify.example']",
             "pattern_type": "stix", "valid_from": "2026-10-01T00:00:00Z"},
            {"type": "malware", "spec_version": "2.1", "id": "malware--31b940d4-6f7f-459a-80ea-9c1f17b58abc",
             "name": "CredHarvest", "is_family": True,
             "description": "A credential harvesting page kit that forwards passwords to a Telegram bot."},
        ],
    }).encode()
