"""Harmless sample files, built on demand, for the malware analyser's tests and the demo world.

Each is a structurally valid file of its kind that the analysers parse (pefile, pyelftools, olevba)
and that does nothing: the PE's and the ELF's code is a single `ret`, the Office document's macro is
whatever source the caller passes and is never run here or anywhere. Nothing in this module writes
to disk or executes anything; the repository holds no sample file, every sample is built in the test.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Mapping, Sequence

__all__ = ["minimal_elf", "minimal_pe", "office_with_macro"]


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class _Blob:
    """Bytes laid out from a base address: `add` appends and answers the address it landed at."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.data = bytearray()

    def add(self, data: bytes, alignment: int = 1) -> int:
        self.data.extend(b"\0" * (_align(len(self.data), alignment) - len(self.data)))
        address = self.base + len(self.data)
        self.data.extend(data)
        return address


# --- PE ------------------------------------------------------------------------------------------

_PE_FILE_ALIGNMENT = 0x200
_PE_SECTION_ALIGNMENT = 0x1000
_PE_TIMESTAMP = 0x65000000  # 2023-09-12: fixed, so a sample's hashes are the same every build


def minimal_pe(strings: Sequence[bytes] = (), *, dll: bool = False,
               imports: Mapping[str, Sequence[str]] | None = None, exports: Sequence[str] = ()) -> bytes:
    """A PE32+ (x86-64) image: `.text` holding one `ret`, `.rdata` with the import directory
    (`imports`: DLL name -> function names) and, when given, an export directory naming every
    export at that `ret`; `.data` holding `strings`, NUL-terminated. `dll` marks it a DLL."""
    imports = imports or {}
    text_rva = _PE_SECTION_ALIGNMENT
    rdata_rva = text_rva + _PE_SECTION_ALIGNMENT  # .text is one byte: one page is plenty
    rdata = _Blob(rdata_rva)
    directories: dict[int, tuple[int, int]] = {}  # data directory index -> (rva, size)

    if imports:
        thunks: list[tuple[int, list[int]]] = []  # (dll name rva, hint/name rvas)
        for dll_name, functions in imports.items():
            name_rva = rdata.add(dll_name.encode("ascii") + b"\0")
            hints = [rdata.add(struct.pack("<H", 0) + name.encode("ascii") + b"\0", 2) for name in functions]
            thunks.append((name_rva, hints))
        descriptors = bytearray()
        iat_start = iat_end = 0
        for name_rva, hints in thunks:
            table = b"".join(struct.pack("<Q", rva) for rva in hints) + b"\0" * 8
            lookup_rva = rdata.add(table, 8)  # the import lookup table
            address_rva = rdata.add(table, 8)  # the import address table, the loader's to fill
            iat_start = iat_start or address_rva
            iat_end = address_rva + len(table)
            descriptors += struct.pack("<IIIII", lookup_rva, 0, 0, name_rva, address_rva)
        descriptors += b"\0" * 20  # the null descriptor ends the list
        directories[1] = (rdata.add(bytes(descriptors), 4), len(descriptors))
        directories[12] = (iat_start, iat_end - iat_start)

    if exports:
        module_rva = rdata.add(b"sample.dll\0" if dll else b"sample.exe\0")
        names = sorted(exports)  # the loader binary-searches the name table
        name_rvas = [rdata.add(name.encode("ascii") + b"\0") for name in names]
        functions_rva = rdata.add(struct.pack(f"<{len(names)}I", *[text_rva] * len(names)), 4)
        names_rva = rdata.add(struct.pack(f"<{len(names)}I", *name_rvas), 4)
        ordinals_rva = rdata.add(struct.pack(f"<{len(names)}H", *range(len(names))), 2)
        directory = struct.pack("<IIHHIIIIIII", 0, _PE_TIMESTAMP, 0, 0, module_rva, 1, len(names), len(names),
                                functions_rva, names_rva, ordinals_rva)
        directories[0] = (rdata.add(directory, 4), len(directory))

    data_rva = rdata_rva + _align(max(len(rdata.data), 1), _PE_SECTION_ALIGNMENT)
    data = b"".join(s + b"\0" for s in strings) or b"\0"
    # (name, content, characteristics, rva): code RX, read-only data R, data RW
    sections = [(b".text", b"\xc3", 0x60000020, text_rva), (b".rdata", bytes(rdata.data) or b"\0", 0x40000040, rdata_rva),
                (b".data", data, 0xC0000040, data_rva)]
    headers_size = _align(0x40 + 4 + 20 + 240 + 40 * len(sections), _PE_FILE_ALIGNMENT)
    raw = bytearray()
    section_headers = bytearray()
    offset = headers_size
    for name, content, characteristics, rva in sections:
        raw_size = _align(len(content), _PE_FILE_ALIGNMENT)
        section_headers += struct.pack("<8sIIIIIIHHI", name, len(content), rva, raw_size, offset, 0, 0, 0, 0,
                                       characteristics)
        raw += content + b"\0" * (raw_size - len(content))
        offset += raw_size
    image_size = _align(data_rva + len(data), _PE_SECTION_ALIGNMENT)

    dos_header = b"MZ" + b"\0" * 58 + struct.pack("<I", 0x40)  # e_lfanew: the PE header follows at once
    characteristics = 0x0022 | (0x2000 if dll else 0)  # executable image, large-address aware, DLL
    coff = struct.pack("<HHIIIHH", 0x8664, len(sections), _PE_TIMESTAMP, 0, 0, 240, characteristics)
    optional = struct.pack(
        "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII",
        0x20B, 14, 0, _PE_FILE_ALIGNMENT, len(rdata.data) + len(data), 0, text_rva, text_rva,
        0x180000000 if dll else 0x140000000, _PE_SECTION_ALIGNMENT, _PE_FILE_ALIGNMENT,
        6, 0, 0, 0, 6, 0, 0, image_size, headers_size, 0,
        3, 0x8100,  # console subsystem; NX compatible, terminal-server aware (no relocations: no dynamic base)
        0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    data_directories = b"".join(struct.pack("<II", *directories.get(index, (0, 0))) for index in range(16))
    headers = dos_header + b"PE\0\0" + coff + optional + data_directories + section_headers
    return bytes(headers + b"\0" * (headers_size - len(headers)) + raw)


# --- ELF -----------------------------------------------------------------------------------------

_ELF_BASE = 0x400000
_ELF_INTERPRETER = b"/lib64/ld-linux-x86-64.so.2"


def minimal_elf(strings: Sequence[bytes] = (), *, needed: Sequence[str] = ("libc.so.6",),
                imports: Sequence[str] = ("puts",)) -> bytes:
    """An ELF64 x86-64 executable (ET_EXEC) mapped by one PT_LOAD: `.interp`, `.text` holding one
    `ret`, `.rodata` holding `strings`, and the dynamic linking tables (`.dynstr`, `.dynsym` with
    `imports` as undefined functions, `.dynamic` with a DT_NEEDED per `needed` library)."""
    dynstr = _Blob(0)
    dynstr.add(b"\0")
    needed_offsets = [dynstr.add(name.encode() + b"\0") for name in needed]
    import_offsets = [dynstr.add(name.encode() + b"\0") for name in imports]
    dynsym = b"\0" * 24 + b"".join(  # the null symbol, then undefined global functions
        struct.pack("<IBBHQQ", offset, 0x12, 0, 0, 0, 0) for offset in import_offsets)
    rodata = b"".join(s + b"\0" for s in strings) or b"\0"

    phnum = 3
    body = _Blob(0)
    body.add(b"\0" * (64 + 56 * phnum))  # the ELF header and program headers, written below
    # (name, type, flags, content, link, entsize, alignment); sh_link indexes this list (+1 for the null section)
    layout: list[tuple[bytes, int, int, bytes, int, int, int]] = [
        (b".interp", 1, 0x2, _ELF_INTERPRETER + b"\0", 0, 0, 1),
        (b".text", 1, 0x6, b"\xc3", 0, 0, 16),
        (b".rodata", 1, 0x2, rodata, 0, 0, 8),
        (b".dynstr", 3, 0x2, bytes(dynstr.data), 0, 0, 1),
        (b".dynsym", 11, 0x2, dynsym, 4, 24, 8),
    ]
    offsets = [body.add(content, alignment) for _, _, _, content, _, _, alignment in layout]
    dynstr_offset, dynsym_offset = offsets[3], offsets[4]
    dynamic = b"".join(struct.pack("<qQ", 1, offset) for offset in needed_offsets) + struct.pack(
        "<qQqQqQqQqQ", 5, _ELF_BASE + dynstr_offset, 6, _ELF_BASE + dynsym_offset, 10, len(dynstr.data), 11, 24, 0, 0)
    layout.append((b".dynamic", 6, 0x3, dynamic, 4, 16, 8))
    offsets.append(body.add(dynamic, 8))
    shstrtab = _Blob(0)
    shstrtab.add(b"\0")
    name_offsets = [shstrtab.add(name + b"\0") for name, *_ in layout]
    shstrtab_name = shstrtab.add(b".shstrtab\0")
    shstrtab_offset = body.add(bytes(shstrtab.data))
    load_size = len(body.data)

    section_headers = b"\0" * 64  # the null section
    for (_, kind, flags, content, link, entsize, alignment), name, offset in zip(layout, name_offsets, offsets,
                                                                                   strict=True):
        section_headers += struct.pack("<IIQQQQIIQQ", name, kind, flags, _ELF_BASE + offset, offset, len(content),
                                       link, 1 if kind == 11 else 0, alignment, entsize)
    section_headers += struct.pack("<IIQQQQIIQQ", shstrtab_name, 3, 0, 0, shstrtab_offset, len(shstrtab.data),
                                   0, 0, 1, 0)
    shoff = body.add(section_headers, 8)
    shnum = len(layout) + 2

    interp_offset, text_offset, dynamic_offset = offsets[0], offsets[1], offsets[5]
    program_headers = b"".join([
        struct.pack("<IIQQQQQQ", 3, 4, interp_offset, _ELF_BASE + interp_offset, _ELF_BASE + interp_offset,
                    len(_ELF_INTERPRETER) + 1, len(_ELF_INTERPRETER) + 1, 1),  # PT_INTERP
        struct.pack("<IIQQQQQQ", 1, 5, 0, _ELF_BASE, _ELF_BASE, load_size, load_size, 0x1000),  # PT_LOAD, R+X
        struct.pack("<IIQQQQQQ", 2, 6, dynamic_offset, _ELF_BASE + dynamic_offset, _ELF_BASE + dynamic_offset,
                    len(dynamic), len(dynamic), 8),  # PT_DYNAMIC
    ])
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8  # 64-bit, little-endian, version 1, System V
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, _ELF_BASE + text_offset, 64, shoff, 0, 64, 56, phnum,
                                 64, shnum, shnum - 1)
    body.data[: len(header) + len(program_headers)] = header + program_headers
    return bytes(body.data)


# --- Office (OLE compound file with a VBA project) ------------------------------------------------

def office_with_macro(source: str = 'Sub AutoOpen()\n MsgBox "hello"\nEnd Sub', *, module: str = "Module1") -> bytes:
    """A Word 97-2003 document (.doc, an OLE compound file: a `WordDocument` stream holding only the
    start of its header, for identification) whose `Macros` storage holds a VBA project
    with one standard module containing `source` ([MS-OVBA]: PROJECT stream, VBA/_VBA_PROJECT with no
    performance cache, VBA/dir, the module stream). The PROJECT stream carries no CMG/DPB/GC
    protection lines (they are encrypted blobs that readers such as olevba ignore)."""
    codepage = 1252
    name = module.encode("cp1252")
    unicode_name = module.encode("utf-16-le")

    def record(record_id: int, payload: bytes) -> bytes:
        return struct.pack("<HI", record_id, len(payload)) + payload

    dir_stream = b"".join([
        record(0x01, struct.pack("<I", 3)),  # PROJECTSYSKIND: 64-bit Windows
        record(0x02, struct.pack("<I", 0x409)),  # PROJECTLCID
        record(0x14, struct.pack("<I", 0x409)),  # PROJECTLCIDINVOKE
        record(0x03, struct.pack("<H", codepage)),  # PROJECTCODEPAGE
        record(0x04, b"Project"),  # PROJECTNAME
        record(0x05, b"") + record(0x40, b""),  # PROJECTDOCSTRING (+ its Unicode form)
        record(0x06, b"") + record(0x3D, b""),  # PROJECTHELPFILEPATH (+ the second copy)
        record(0x07, struct.pack("<I", 0)),  # PROJECTHELPCONTEXT
        record(0x08, struct.pack("<I", 0)),  # PROJECTLIBFLAGS
        struct.pack("<HIIH", 0x09, 4, 1, 0),  # PROJECTVERSION (major, minor)
        record(0x0C, b"") + record(0x3C, b""),  # PROJECTCONSTANTS (+ Unicode)
        # no REFERENCE records; PROJECTMODULES, then PROJECTCOOKIE
        record(0x0F, struct.pack("<H", 1)),
        record(0x13, struct.pack("<H", 0xFFFF)),
        # the MODULE record
        record(0x19, name),  # MODULENAME
        record(0x47, unicode_name),  # MODULENAMEUNICODE
        record(0x1A, name) + record(0x32, unicode_name),  # MODULESTREAMNAME (+ Unicode)
        record(0x1C, b"") + record(0x48, b""),  # MODULEDOCSTRING (+ Unicode)
        record(0x31, struct.pack("<I", 0)),  # MODULEOFFSET: the source starts the stream
        record(0x1E, struct.pack("<I", 0)),  # MODULEHELPCONTEXT
        record(0x2C, struct.pack("<H", 0xFFFF)),  # MODULECOOKIE
        record(0x21, b""),  # MODULETYPE: procedural module
        record(0x2B, b""),  # the MODULE terminator
        record(0x10, b""),  # the dir stream terminator
    ])
    project = (f'ID="{{00000000-0000-0000-0000-000000000000}}"\r\nModule={module}\r\nName="Project"\r\n'
               'HelpContextID="0"\r\nVersionCompatible32="393222000"\r\n\r\n[Host Extender Info]\r\n'
               '&H00000001={3832D640-CF90-11CF-8E43-00A0C911005A};VBE;&H00000000\r\n').encode("cp1252")
    # _VBA_PROJECT: Reserved1, Version 0xFFFF (= no performance cache: readers take the source), Reserved2/3
    vba_project = struct.pack("<HHBH", 0x61CC, 0xFFFF, 0, 0)
    code = source.replace("\r\n", "\n").replace("\n", "\r\n").encode("cp1252")
    return _compound_file({
        # The start of a Word binary file's FIB (wIdent, nFib of Word 97): enough for tools to tell
        # the document is Word's; Word itself would want the rest of the format.
        "WordDocument": struct.pack("<HH", 0xA5EC, 0x00C1) + b"\0" * 28,
        "Macros": {
            "PROJECT": project,
            "VBA": {"_VBA_PROJECT": vba_project, "dir": _ovba_compress(dir_stream), module: _ovba_compress(code)},
        },
    })


def _ovba_compress(data: bytes) -> bytes:
    """[MS-OVBA] 2.4.1 compression with literal tokens only: a valid CompressedContainer that any
    decompressor reads back, larger than the input by one flag byte per eight bytes."""
    out = bytearray(b"\x01")  # the container's signature byte
    chunk_size = 455 * 8  # 455 token sequences of 9 bytes: the chunk data stays within 4096 bytes
    for start in range(0, len(data), chunk_size):
        chunk = data[start:start + chunk_size]
        body = b"".join(b"\x00" + chunk[i:i + 8] for i in range(0, len(chunk), 8))  # flag 0: 8 literals
        # header: size - 3 in 12 bits, signature 0b011, flag 1 (compressed)
        out += struct.pack("<H", (len(body) + 2 - 3) | 0x3000 | 0x8000) + body
    return bytes(out)


# A storage is a dict of children; a stream is its bytes.
_Tree = Mapping[str, "bytes | _Tree"]

_SECTOR = 512
_MINI_SECTOR = 64
_MINI_CUTOFF = 4096
_FREE, _END, _FAT_SECTOR, _NO_STREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF


def _compound_file(tree: _Tree) -> bytes:
    """A Compound File Binary (MS-CFB) version 3 file (512-byte sectors) holding `tree`: streams under
    4096 bytes live in the mini stream (64-byte sectors), larger ones in sectors of their own."""
    # Flatten into directory entries: (name, is_storage, data, children indexes); index 0 is the root.
    entries: list[tuple[str, bool, bytes, list[int]]] = [("Root Entry", True, b"", [])]

    def add(children: _Tree, parent: int) -> None:
        for name, child in children.items():
            entries.append((name, not isinstance(child, bytes), child if isinstance(child, bytes) else b"", []))
            index = len(entries) - 1
            entries[parent][3].append(index)
            if not isinstance(child, bytes):
                add(child, index)

    add(tree, 0)

    # Mini stream: small streams, each in whole 64-byte mini sectors chained in the mini FAT.
    mini_stream = bytearray()
    mini_fat: list[int] = []
    big: list[int] = []  # entries stored in regular sectors
    start_of: dict[int, int] = {}
    for index, (_, is_storage, data, _) in enumerate(entries):
        if is_storage or not data:
            continue
        if len(data) >= _MINI_CUTOFF:
            big.append(index)
            continue
        first = len(mini_fat)
        count = _align(len(data), _MINI_SECTOR) // _MINI_SECTOR
        mini_fat += [*range(first + 1, first + count), _END]
        mini_stream += data + b"\0" * (count * _MINI_SECTOR - len(data))
        start_of[index] = first

    def sectors(size: int) -> int:
        return _align(size, _SECTOR) // _SECTOR

    # Regular sectors after the FAT: directory, mini FAT, the mini stream (the root's data), big streams.
    directory_size = _align(len(entries) * 128, _SECTOR)
    mini_fat_bytes = b"".join(struct.pack("<I", n) for n in mini_fat)
    chains = [sectors(directory_size), sectors(len(mini_fat_bytes)), sectors(len(mini_stream)),
              *(sectors(len(entries[i][2])) for i in big)]
    data_sectors = sum(chains)
    fat_sectors = 1
    while fat_sectors * (_SECTOR // 4) < fat_sectors + data_sectors:
        fat_sectors += 1
    if fat_sectors > 109:
        raise ValueError("sample too large for a compound file without DIFAT sectors")
    fat = [_FAT_SECTOR] * fat_sectors
    starts: list[int] = []
    for count in chains:
        starts.append(len(fat) if count else _END)
        fat += [*range(len(fat) + 1, len(fat) + count), _END] if count else []
    fat += [_FREE] * (fat_sectors * (_SECTOR // 4) - len(fat))
    directory_start, mini_fat_start, mini_stream_start = starts[0], starts[1], starts[2]
    for index, start in zip(big, starts[3:], strict=True):
        start_of[index] = start

    def direntry(index: int) -> bytes:
        name, is_storage, data, children = entries[index]
        encoded = name.encode("utf-16-le") + b"\0\0"
        kind = 5 if index == 0 else 1 if is_storage else 2
        # Siblings: a chain through right-sibling links, in the order CFB compares names (length, then
        # upper case), which is a valid (if unbalanced) binary search tree for readers.
        child = _NO_STREAM
        if children:
            child = min(children, key=lambda i: _cfb_key(entries[i][0]))
        right = siblings_right.get(index, _NO_STREAM)
        if index == 0:
            start, size = (mini_stream_start, len(mini_stream)) if mini_stream else (_END, 0)
        elif is_storage:
            start, size = 0, 0
        else:
            start, size = start_of.get(index, _END), len(data)
        return struct.pack("<64sHBBIII16sIQQIQ", encoded, len(encoded), kind, 1, _NO_STREAM, right, child,
                           b"\0" * 16, 0, 0, 0, start, size)

    siblings_right: dict[int, int] = {}
    for _, _, _, children in entries:
        ordered = sorted(children, key=lambda i: _cfb_key(entries[i][0]))
        for left, right in itertools.pairwise(ordered):
            siblings_right[left] = right
    directory = b"".join(direntry(i) for i in range(len(entries)))
    directory += b"".join(  # unused entries: empty names, no links
        struct.pack("<64sHBBIII16sIQQIQ", b"", 0, 0, 0, _NO_STREAM, _NO_STREAM, _NO_STREAM, b"\0" * 16, 0, 0, 0,
                    0, 0) for _ in range((directory_size - len(directory)) // 128))

    difat = list(range(fat_sectors)) + [_FREE] * (109 - fat_sectors)
    header = struct.pack("<8s16sHHHHH6sIIIIIIIII", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"\0" * 16, 0x3E, 3, 0xFFFE,
                         9, 6, b"\0" * 6, 0, fat_sectors, directory_start, 0, _MINI_CUTOFF,
                         mini_fat_start if mini_fat else _END, sectors(len(mini_fat_bytes)), _END, 0)
    header += struct.pack("<109I", *difat)

    def padded(data: bytes) -> bytes:
        return data + b"\0" * (_align(len(data), _SECTOR) - len(data))

    body = b"".join(struct.pack("<I", n) for n in fat)
    body += padded(directory) + padded(mini_fat_bytes) + padded(bytes(mini_stream))
    body += b"".join(padded(entries[i][2]) for i in big)
    return header + body


def _cfb_key(name: str) -> tuple[int, str]:
    """MS-CFB 2.6.4: names compare by length (UTF-16 code units) first, then by their upper case."""
    return len(name.encode("utf-16-le")), name.upper()
