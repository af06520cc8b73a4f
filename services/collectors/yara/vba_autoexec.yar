/*
 * VBA macros that run by themselves when a document is opened or closed, and start a program or
 * create a COM object: the shape of most macro droppers, and of some legitimate automation, so
 * a match says "look here", not "malicious".
 *
 * Office files store VBA source compressed; the analyser also runs every rule over the macro
 * source olevba decompresses, which is what this rule is written for (it matches plain .bas/.vbs
 * text too).
 */
rule VBA_AutoExec_Shell_Or_CreateObject : macro autoexec
{
    meta:
        description = "VBA macro with an auto-exec entry point that calls Shell or CreateObject"

    strings:
        $auto1 = "AutoOpen" nocase
        $auto2 = "Document_Open" nocase
        $auto3 = "Workbook_Open" nocase
        $auto4 = "Auto_Open" nocase
        $auto5 = "AutoClose" nocase
        $auto6 = "Document_Close" nocase
        $auto7 = "AutoExec" nocase
        $run1 = /\bShell\s*[\(\x22]/ nocase
        $run2 = "CreateObject" nocase
        $run3 = "WScript.Shell" nocase
        $run4 = "Shell.Application" nocase

    condition:
        any of ($auto*) and any of ($run*)
}
