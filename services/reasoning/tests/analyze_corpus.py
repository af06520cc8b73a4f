"""A deterministic 100K-token case file: three long documents of routine operations text with a
few dozen evidence sentences (documentation-range IPs, fictional domains and hashes) spread through."""

from __future__ import annotations

import random

QUESTION = "Who is behind the intrusion at Acme Logistics, and how did they get in?"

_SUBJECTS = ["The facilities team", "The finance department", "Our helpdesk", "The quarterly review board",
             "The logistics planners", "The HR onboarding group", "The warehouse shift lead", "Procurement"]
_VERBS = ["scheduled", "reviewed", "postponed", "discussed", "approved", "summarised", "documented", "updated"]
_OBJECTS = ["the parking allocation for next month", "the printer toner order", "a new vendor contract",
            "the holiday rota", "the forklift maintenance plan", "the cafeteria menu survey",
            "the office relocation timeline", "the annual safety training", "the travel expense policy",
            "the carbon reporting template", "the shipping dock repainting", "the badge photo schedule"]
_TAILS = ["after a short meeting", "without objections", "pending a second quote", "for the third time",
          "in the weekly newsletter", "with minor edits", "ahead of the audit", "as agreed last week"]

EVIDENCE = [
    "Phishing emails from invoices@acme-logistics-billing.xyz delivered a macro loader to finance staff on 3 March.",
    "The loader beaconed to 203.0.113.45 over HTTPS every 60 seconds, consistent with command-and-control.",
    "Sandbox analysis of the dropper (SHA-256 9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c1b3d5f7e9a1c3b5d7f9e1a3c5b7d9f1e) "
    "showed it injects into explorer.exe (T1055).",
    "The actor exploited CVE-2023-34362 on the exposed MOVEit server to gain initial access before the phishing wave.",
    "Infrastructure overlaps link 203.0.113.45 and update-cdn-sync.ru to the group tracked as FIN7.",
    "Credential dumping with a Mimikatz variant (T1003.001) was observed on the domain controller DC02.",
    "Lateral movement used stolen credentials over RDP (T1021.001) from host FIN-WS17 to the file server.",
    "About 14 GB of shipping manifests were exfiltrated to 198.51.100.23 via rclone (T1567.002).",
    "The ransomware note referenced a Tor site and a Bitcoin address bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh.",
    "A second domain, acme-logistics-billing.xyz, was registered two days before the campaign by the same registrant.",
    "Analysts note the tooling and timing also resemble earlier activity attributed to APT29, though with low confidence.",
    "The backdoor's configuration contained the campaign identifier GRAPHITE-0324 and the C2 domain update-cdn-sync.ru.",
]


def _filler(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."


def case_file(target_chars: int = 560_000, documents: int = 3) -> list[tuple[str, str]]:
    """(id, text) per document; every evidence sentence appears once, at a random place."""
    rng = random.Random(7)
    per_document = target_chars // documents
    texts: list[list[str]] = [[] for _ in range(documents)]
    placed = {index: rng.randrange(documents) for index in range(len(EVIDENCE))}
    for doc in range(documents):
        mine = [EVIDENCE[i] for i, where in placed.items() if where == doc]
        length = 0
        paragraph: list[str] = []
        while length < per_document:
            if mine and rng.random() < 0.004:
                sentence = mine.pop()
            else:
                sentence = _filler(rng)
            paragraph.append(sentence)
            length += len(sentence) + 1
            if len(paragraph) == 6:
                texts[doc].append(" ".join(paragraph))
                paragraph = []
        paragraph.extend(mine)  # evidence not yet placed goes at the end
        texts[doc].append(" ".join(paragraph))
    return [(f"case-{doc}", "\n\n".join(paragraphs)) for doc, paragraphs in enumerate(texts)]
