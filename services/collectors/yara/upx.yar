/*
 * A PE whose sections carry the names UPX gives them (UPX0, UPX1): packed with UPX. Packing is
 * common in malware and in legitimate software alike; it hides the code from static analysis,
 * which is why it is worth a flag.
 */
import "pe"

rule UPX_Packed_PE : packer upx
{
    meta:
        description = "PE with UPX section names (UPX0/UPX1): packed with UPX"

    condition:
        pe.is_pe and for any section in pe.sections : (section.name == "UPX0" or section.name == "UPX1")
}
