// The demo world's rule for its fictional PaleMoth stealer: it matches the inert stand-in that
// cdn-updates.example.net serves as BrowserUpdate.exe. `malware` names the family the file is a
// sample of (services/collectors/yara/README.md); the demo points the collectors at this folder
// with malware.rules_dirs.
rule PaleMoth_StandIn
{
    meta:
        malware = "PaleMoth"
        description = "The demo world's inert PaleMoth stand-in"
    strings:
        $name = "PaleMoth stealer" ascii
    condition:
        $name
}
