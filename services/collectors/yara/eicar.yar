/*
 * The EICAR anti-malware test file (https://www.eicar.org/download-anti-malware-testfile/): a
 * harmless 68-byte text file every anti-malware product detects on purpose, so a pipeline can be
 * checked end to end without real malware. Its `malware` meta shows the convention that links a
 * matching file to a malware entity in the graph (README.md).
 *
 * The test string is written here in two parts (its prefix as hex) so this rules file is not
 * itself mistaken for the test file by scanners that look at the repository.
 */
rule EICAR_Test_File : test_file
{
    meta:
        description = "The EICAR anti-malware test file: harmless, detected by design"
        malware = "EICAR-Test-File"
        reference = "https://www.eicar.org/download-anti-malware-testfile/"

    strings:
        // X5O!P%@AP[4\PZX54(P^)7CC)7}$
        $prefix = { 58 35 4F 21 50 25 40 41 50 5B 34 5C 50 5A 58 35 34 28 50 5E 29 37 43 43 29 37 7D 24 }
        $name = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

    condition:
        // The file starts with the string and may be followed by whitespace only: 128 bytes at most.
        $prefix at 0 and $name at 28 and filesize <= 128
}
