"""Short, realistic multi-document inputs for Analyze: a threat-feed item, a ransom note, a STIX
summary and a long incident report about one fictional campaign. Everything here is invented:
addresses are documentation ranges (RFC 5737), domains and wallets are made up, and the actor
"VELVET TEMPEST" does not exist."""

from __future__ import annotations

from dataclasses import dataclass

FEED_ITEM = """\
[ThreatFeed 2026-03-14 09:12 UTC] FakeUpdate campaign delivers LockPhantom ransomware
Severity: high. Confidence: medium. TLP:GREEN.
Since 9 March, compromised WordPress sites have shown visitors a fake "Chrome update required" overlay.
The overlay downloads ChromeUpdate_x64.zip from cdn-browser-update.top, which contains a signed-looking
JavaScript loader. The loader fetches a second stage from 203.0.113.77 over HTTPS and installs the
LockPhantom ransomware about two hours later. Infrastructure and the loader's string obfuscation overlap
with earlier SocGholish-style activity that analysts attribute to the group VELVET TEMPEST.
Indicators: cdn-browser-update.top, 203.0.113.77, 198.51.100.14, SHA-256
4b1d8e0f2a6c9e3b7d5f1a8c4e2b6d0f9a3c7e1b5d8f2a4c6e0b9d3f7a1c5e8b.
"""

RANSOM_NOTE = """\
!!! YOUR FILES ARE ENCRYPTED BY LOCKPHANTOM !!!

All documents, databases and backups on your network have been encrypted with AES-256 and RSA-4096.
Do not rename the files and do not try third-party decryptors: you will lose your data forever.

We also downloaded 180 GB of your HR and finance data. If you do not contact us within 72 hours,
it will be published on our leak site.

HOW TO PAY:
1. Install Tor Browser and open lockphntm4xq2vz7.onion/chat (your ID: LP-7731-QX).
2. Buy 4.5 BTC and send it to bc1q9h7garjmg4rlv2xj6kr0h5ssx8dm9u3pl6wn7t.
   We also accept Monero (XMR) at a 15% discount; the XMR address is given in the chat.
3. After payment you receive the decryptor and proof that the stolen data was deleted.

You can decrypt 2 files for free in the chat to verify that we can restore everything.
"""

STIX_SUMMARY = """\
STIX 2.1 bundle bundle--5f0c3e2a-9d41-4c6b-8e7f-2a1b3c4d5e6f (producer: Northwind CERT), summary:
- threat-actor--a1: "VELVET TEMPEST", aliases "TA-FakeUpdate", "Gold Lantern"; motivation: financial gain.
- campaign--c7: "FakeUpdate March 2026", first seen 2026-03-09, attributed-to threat-actor--a1.
- malware--m3: "LockPhantom" ransomware (family: ransomware); uses attack-pattern T1486 (Data Encrypted for Impact).
- malware--m4: "FakeUpdate loader" (JavaScript downloader); delivered by campaign--c7.
- indicator--i9: [domain-name:value = 'cdn-browser-update.top'] indicates malware--m4.
- indicator--i10: [ipv4-addr:value = '203.0.113.77'] indicates malware--m3; valid from 2026-03-10.
- indicator--i11: [cryptocurrency-wallet = 'bc1q9h7garjmg4rlv2xj6kr0h5ssx8dm9u3pl6wn7t'] related-to campaign--c7.
- relationship: campaign--c7 uses malware--m3; threat-actor--a1 uses attack-pattern T1189 (Drive-by Compromise).
"""

_REPORT_SECTIONS = [
    ("1. Executive summary",
     "On 12 March 2026 Harbor Freight Cooperative (HFC) suffered a ransomware incident that encrypted 340 "
     "servers and workstations across three sites. The intrusion began with a drive-by download: an "
     "employee visited a compromised supplier website that displayed a fake browser update. We assess "
     "with moderate confidence that the operators are VELVET TEMPEST, a financially motivated group, "
     "and that the payload was the LockPhantom ransomware. HFC did not pay the ransom."),
    ("2. Scope and sources",
     "This report draws on endpoint telemetry from 1,200 hosts, firewall and proxy logs for the period "
     "1 to 15 March, memory images of six servers, and the ransom note left on encrypted hosts. Interviews "
     "with the service desk and the finance team filled gaps in the timeline. Logs older than 30 days "
     "had already been rotated and were not available."),
    ("3. Initial access",
     "On 10 March at 14:02 a finance clerk on host HFC-FIN-023 browsed to portal.pallet-supply.example, a "
     "supplier site compromised in early March. The site injected a script that showed a full-screen "
     "\"Chrome update required\" page. The clerk downloaded ChromeUpdate_x64.zip from "
     "cdn-browser-update.top and ran the JavaScript file inside it with wscript.exe. Proxy logs show the "
     "loader contacting 203.0.113.77 eleven seconds later."),
    ("4. Execution and persistence",
     "The loader profiled the host (domain membership, antivirus products, user privileges) and posted the "
     "results to 203.0.113.77. Two hours later it downloaded a Cobalt Strike beacon that was injected into "
     "a rundll32.exe process. Persistence was a scheduled task named \"GoogleUpdateTaskMachineQC\" that "
     "restarted the beacon at logon. The beacon's malleable profile mimicked jQuery CDN traffic."),
    ("5. Privilege escalation and credential access",
     "On 11 March the operators dumped LSASS memory on HFC-FIN-023 with a renamed copy of procdump and "
     "recovered the cached credentials of a helpdesk administrator. With that account they ran "
     "AdFind to enumerate the domain and used Kerberoasting to obtain a service account for the backup "
     "system, whose password had not been changed since 2019."),
    ("6. Lateral movement",
     "Using the helpdesk account, the operators moved over RDP and PsExec to 14 servers, including both "
     "domain controllers and the Veeam backup server HFC-BKP-01. On the backup server they deleted the "
     "restore points and disabled the backup jobs. Remote sessions originated from HFC-FIN-023 and, later, "
     "from 198.51.100.14 through the VPN gateway with the stolen service-account credentials."),
    ("7. Exfiltration",
     "Between 11 March 22:00 and 12 March 03:30 about 180 GB of data from the HR and finance shares were "
     "compressed with 7-Zip and uploaded with rclone to a MEGA account. The volume matches the claim in "
     "the ransom note. The rclone configuration file recovered from HFC-FS-02 listed a second remote that "
     "was never used."),
    ("8. Impact",
     "On 12 March at 04:10 the LockPhantom binary was pushed to all domain-joined hosts by a group policy "
     "object named \"Default Update Policy\". Files were encrypted and renamed with the .lphantom "
     "extension, shadow copies were deleted with vssadmin, and a ransom note named README_LOCKPHANTOM.txt "
     "was written to every folder. Production at the three sites stopped for four days."),
    ("9. Ransom demand and payment channel",
     "The note demanded 4.5 BTC to the address bc1q9h7garjmg4rlv2xj6kr0h5ssx8dm9u3pl6wn7t and directed the "
     "victim to a Tor chat at lockphntm4xq2vz7.onion, offering a discount for payment in Monero. Blockchain "
     "analysis shows the Bitcoin address received payments from two other victims in February, which were "
     "forwarded within hours through a mixing service to an exchange deposit address."),
    ("10. Attribution",
     "The fake update lure, the JavaScript loader's obfuscation and the use of 203.0.113.77 match the "
     "FakeUpdate campaign that Northwind CERT attributes to VELVET TEMPEST. The Cobalt Strike watermark "
     "1580103824 was also seen in two earlier VELVET TEMPEST intrusions. We cannot exclude an affiliate "
     "model in which VELVET TEMPEST sells initial access to a separate ransomware operator."),
    ("11. Detection gaps",
     "The endpoint agent raised a medium-severity alert for the LSASS access on 11 March, but the alert queue "
     "was not monitored outside business hours. Proxy categorisation listed cdn-browser-update.top as "
     "\"newly registered\" without blocking it. The VPN accepted the service account although it had never "
     "logged in remotely before, because conditional access rules covered only user accounts. Backup "
     "deletion on HFC-BKP-01 produced no alert at all."),
    ("12. Response actions",
     "HFC isolated the three sites from the wide-area network at 06:20 on 12 March, disabled the helpdesk and "
     "backup service accounts, and rebuilt both domain controllers from clean media. Systems were restored "
     "from an offline tape set dated 1 March, so ten days of warehouse records had to be re-entered by hand. "
     "Law enforcement was notified on 13 March and received the ransom note, the wallet address and the "
     "rclone configuration."),
    ("13. Timeline (UTC)",
     "10 Mar 14:02 fake update downloaded on HFC-FIN-023. 10 Mar 14:03 loader contacts 203.0.113.77. "
     "10 Mar 16:05 Cobalt Strike beacon installed. 11 Mar 09:40 LSASS dumped. 11 Mar 11:15 Kerberoasting of the "
     "backup service account. 11 Mar 13:00 to 19:30 lateral movement to 14 servers. 11 Mar 20:10 VPN logins "
     "from 198.51.100.14. 11 Mar 22:00 to 12 Mar 03:30 exfiltration of 180 GB. 12 Mar 02:50 backups deleted. "
     "12 Mar 04:10 ransomware deployed by group policy. 12 Mar 06:20 sites isolated."),
    ("Appendix A: indicators",
     "Domains: cdn-browser-update.top, portal.pallet-supply.example (compromised, legitimate owner notified), "
     "lockphntm4xq2vz7.onion. Addresses: 203.0.113.77 (loader and beacon command and control), 198.51.100.14 "
     "(VPN logins with stolen credentials). Files: ChromeUpdate_x64.zip, update.js (SHA-256 "
     "4b1d8e0f2a6c9e3b7d5f1a8c4e2b6d0f9a3c7e1b5d8f2a4c6e0b9d3f7a1c5e8b), lphantom.exe, "
     "README_LOCKPHANTOM.txt. Scheduled task: GoogleUpdateTaskMachineQC. Bitcoin: "
     "bc1q9h7garjmg4rlv2xj6kr0h5ssx8dm9u3pl6wn7t. Cobalt Strike watermark: 1580103824."),
    ("Appendix B: affected systems",
     "Encrypted: 212 workstations and 128 servers, among them the warehouse management system, the payroll "
     "server and two print servers. Not encrypted: the isolated production line controllers and the "
     "cloud-hosted e-mail service. Data stolen: HR share (personnel files, 2019 to 2026) and finance share "
     "(supplier invoices, bank statements). No customer payment card data was stored on the affected shares."),
    ("Appendix C: interview notes",
     "The finance clerk said the update page looked exactly like the browser's own and that a colleague had "
     "seen the same page on the supplier portal a day earlier but closed it. The service desk confirmed that the "
     "helpdesk administrator had logged in interactively on HFC-FIN-023 on 9 March to fix a printer driver, "
     "which left the cached credentials the operators later dumped. The backup administrator stated that the "
     "backup service account was shared with a former contractor and that its password was stored in a "
     "spreadsheet on the IT share. Finance staff reported no unusual e-mails or calls before the incident; "
     "nobody was contacted by the attackers outside the Tor chat."),
    ("Appendix D: log excerpts",
     "proxy 2026-03-10T14:02:41Z HFC-FIN-023 GET https://cdn-browser-update.top/ChromeUpdate_x64.zip 200 "
     "application/zip 48213. proxy 2026-03-10T14:02:52Z HFC-FIN-023 POST https://203.0.113.77/api/v2/report 200. "
     "edr 2026-03-11T09:40:12Z HFC-FIN-023 process pd64.exe opened lsass.exe with PROCESS_VM_READ, severity "
     "medium, not triaged. vpn 2026-03-11T20:10:03Z user svc-backup from 198.51.100.14 authenticated, no second "
     "factor required. fileserver 2026-03-11T22:04:19Z HFC-FS-02 rclone.exe copy started by svc-backup, "
     "destination mega:hfc. gpo 2026-03-12T04:09:55Z policy \"Default Update Policy\" modified by helpdesk-adm, "
     "startup script \\\\hfc.local\\netlogon\\lphantom.exe added."),
    ("Appendix E: comparison with earlier cases",
     "Two earlier intrusions handled by the same response provider, at a food distributor in November 2025 and a "
     "freight forwarder in January 2026, began with the same fake browser update and used the same Cobalt "
     "Strike watermark. In the November case the payload was a different ransomware family, BlackMarrow, and "
     "the ransom was paid to a different Bitcoin address, which supports the affiliate model described in "
     "section 10. In the January case no ransomware was deployed; the operators were evicted after the "
     "credential dumping stage."),
    ("14. Recommendations",
     "Block the listed indicators, reset all privileged and service-account passwords, enforce multi-factor "
     "authentication on the VPN, keep offline backups, restrict wscript.exe and cscript.exe through "
     "application control, and train staff to recognise fake browser update prompts."),
]
LONG_REPORT = "INCIDENT REPORT HFC-IR-2026-007 (fictional)\n\n" + "\n\n".join(
    f"{title}\n{body}" for title, body in _REPORT_SECTIONS)


@dataclass(frozen=True)
class Case:
    name: str
    question: str
    documents: list[tuple[str, str]]  # (id, text)
    max_hypotheses: int = 2  # 0 = the service default (3)


CASES = [
    # The input of issue R1 item 7, as it was sent (service default of hypotheses): SmolLM2 wrote a
    # raw newline inside a statement and the hypotheses phase failed every time.
    Case("fake-update", "Who is behind the fake update campaign and how are victims paid?",
         [("feed", FEED_ITEM), ("note", RANSOM_NOTE), ("stix", STIX_SUMMARY)], max_hypotheses=0),
    Case("incident-report", "How did the attackers get into Harbor Freight Cooperative and who are they?",
         [("report", LONG_REPORT), ("feed", FEED_ITEM)]),
    Case("payment-trail", "Where does the ransom money go, and which group collects it?",
         [("note", RANSOM_NOTE), ("stix", STIX_SUMMARY), ("report", LONG_REPORT)]),
]

# What SmolLM2 wrote for the hypotheses phase on the fake-update case (issue R1, item 7), every time:
# json.loads refused it ("Invalid control character at: line 1 column 116"), twice, so the phase failed.
SMOLLM2_HYPOTHESES = (
    '{ "hypotheses": [{"statement":"1.0}, {c2:false, c3:" ,"confidence" : 0.9, "evidence" : [ ] }, '
    '{"statement":"1.1} }}\nThe evidence is a fake update campaign that delivers ransomware to WordPress '
    'sites. The malware is a family of the malware family knownas" ,"confidence" : 1.0, "evidence" : [ ] } ] }')
