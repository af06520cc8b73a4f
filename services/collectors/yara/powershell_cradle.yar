/*
 * A PowerShell "download cradle": a command line or script that fetches code from the web and
 * runs it, typically `IEX (New-Object Net.WebClient).DownloadString('http://...')`. Matched in
 * ASCII and UTF-16LE (how Windows binaries and scripts embed command lines).
 */
rule PowerShell_Download_Cradle : powershell downloader
{
    meta:
        description = "PowerShell that downloads content from the web and executes it"

    strings:
        $ps = "powershell" nocase ascii wide
        $dl1 = "DownloadString" nocase ascii wide
        $dl2 = "DownloadData" nocase ascii wide
        $dl3 = "DownloadFile" nocase ascii wide
        $dl4 = "Invoke-WebRequest" nocase ascii wide
        $dl5 = "Net.WebClient" nocase ascii wide
        $dl6 = "Start-BitsTransfer" nocase ascii wide
        $ex1 = "IEX" ascii wide
        $ex2 = "Invoke-Expression" nocase ascii wide
        $ex3 = "Start-Process" nocase ascii wide

    condition:
        $ps and any of ($dl*) and any of ($ex*)
}
