"""A generated corpus of bad and hostile uploads, for tests/test_hostile_inputs.py.

Each `UploadCase` writes one .zip (or file named .zip) into a folder and says what the Dataset
tab must do with it: reject it with a message (`rejected`), load it with the odd image converted
to RGB (`converted`), or load it and list the odd file in the import report (`skipped`). Archives
are crafted with `zipfile` and byte patches (symlink modes, the encryption flag, sizes a header
lies about, non-UTF-8 names); images are made with PIL at 8 px so the whole corpus builds in
about a second. `PARAMETER_CASES` are RunConfig settings that must be refused.
"""

from __future__ import annotations

import io
import math
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

RGB = (200, 30, 40)
# a valid two-class dataset: 3 train + 1 test image per class, 8x8 PNGs
BASE_ROWS = [(f"{label}/{i}.png", "test" if i == 3 else "train", label)
             for label in ("cat", "dog") for i in range(4)]
ODD = "odd"  # folder of the image under test; its row is the last, label cat, split train


@dataclass(frozen=True)
class UploadCase:
    id: str
    category: str  # archive, image, metadata
    outcome: str  # rejected, converted, skipped, accepted
    message: str  # regex: the rejection message, or the skip reason in the import report
    build: Callable[[Path], Path] = field(repr=False)  # writes the upload into a folder
    member: str = ""  # converted / skipped: the dataset path of the file under test
    rgb: tuple[int, int, int] | None = None  # converted: the colour it must decode to
    limits: dict = field(default_factory=dict)  # "module.CONSTANT" lowered for the case
    classes: tuple[str, ...] = ("cat", "dog")  # accepted: the class names it must load with


# -- building blocks ---------------------------------------------------------------------------


def png(color=RGB, size=(8, 8), mode="RGB", **save) -> bytes:
    return encode(Image.new(mode, size, color), "PNG", **save)


def encode(image: Image.Image, fmt: str, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def base_members() -> dict[str, bytes]:
    return {path: png() for path, _, _ in BASE_ROWS}


def metadata(rows, header="path,split,label") -> bytes:
    return ("\n".join([header, *(",".join(r) for r in rows)]) + "\n").encode()


def write_zip(path: Path, members: dict[str, bytes] | list[tuple[str, bytes]],
              *, compression=zipfile.ZIP_DEFLATED) -> Path:
    items = members.items() if isinstance(members, dict) else members
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in items:
            archive.writestr(name, data)
    return path


def dataset_zip(folder: Path, *, extra: dict[str, bytes] | None = None, extra_rows=(),
                csv: bytes | None = None, name: str = "upload.zip") -> Path:
    """The base dataset plus `extra` files and `extra_rows` in its metadata.csv."""
    members = {**base_members(), **(extra or {})}
    members["metadata.csv"] = csv if csv is not None else metadata([*BASE_ROWS, *extra_rows])
    return write_zip(folder / name, members)


def odd_image_zip(filename: str, data: bytes) -> Callable[[Path], Path]:
    member = f"{ODD}/{filename}"
    return lambda folder: dataset_zip(folder, extra={member: data},
                                      extra_rows=[(member, "train", "cat")])


def with_member(name: str, data: bytes, *, mode: int | None = None,
                flag_bits: int = 0) -> Callable[[Path], Path]:
    """The base dataset zip plus one crafted member (Unix `mode`, general-purpose flag bits)."""

    def build(folder: Path) -> Path:
        path = dataset_zip(folder)
        with zipfile.ZipFile(path, "a") as archive:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            archive.writestr(info, data)
        if flag_bits:
            _patch_flag_bits(path, name, flag_bits)
        return path

    return build


def _patch_flag_bits(path: Path, name: str, bits: int) -> None:
    """Set general-purpose flag bits of `name` in its local and central headers."""
    blob = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        start = 0
        while (start := blob.find(signature, start)) >= 0:
            if blob[start + name_at:start + name_at + len(encoded)] == encoded:
                (flags,) = struct.unpack_from("<H", blob, start + flag_at)
                struct.pack_into("<H", blob, start + flag_at, flags | bits)
            start += 4
    path.write_bytes(bytes(blob))


def raw_name_zip(placeholder: str, raw: bytes) -> Callable[[Path], Path]:
    """An ImageFolder zip whose member names hold `raw` bytes (patched over an ASCII
    placeholder of the same length) without the UTF-8 flag, as legacy zip tools write them."""
    assert len(placeholder.encode()) == len(raw)

    def build(folder: Path) -> Path:
        members = {f"{placeholder}/{i}.png": png() for i in range(3)}
        members.update({f"dog/{i}.png": png() for i in range(3)})
        path = write_zip(folder / "upload.zip", members)
        path.write_bytes(path.read_bytes().replace(placeholder.encode(), raw))
        return path

    return build


def declared_huge_zip(folder: Path) -> Path:
    """20 tiny members whose central directory claims 4 GiB each: 80 GiB in all."""
    path = write_zip(folder / "upload.zip", {f"cat/{i}.png": b"x" for i in range(20)})
    blob = bytearray(path.read_bytes())
    start = 0
    while (start := blob.find(b"PK\x01\x02", start)) >= 0:
        struct.pack_into("<I", blob, start + 24, 0xFFFF_FFF0)  # uncompressed size
        start += 4
    path.write_bytes(bytes(blob))
    return path


def ratio_bomb_zip(folder: Path) -> Path:
    """8 MiB of zeros in one member (deflate packs it about 1000:1), inside a valid dataset."""
    return dataset_zip(folder, extra={"cat/padding.bmp": bytes(8 << 20)})


def too_many_files_zip(folder: Path) -> Path:
    members = {f"cat/{i}.png": png() for i in range(40)}
    members.update({f"dog/{i}.png": png() for i in range(40)})
    return write_zip(folder / "upload.zip", members)


def truncated_zip(folder: Path) -> Path:
    path = dataset_zip(folder)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) * 2 // 3])
    return path


def damaged_member_zip(folder: Path) -> Path:
    """The directory is intact but one member's compressed bytes are not (CRC mismatch)."""
    path = dataset_zip(folder, extra={"cat/big.bmp": bytes(range(256)) * 64})
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("cat/big.bmp")
    name_len, extra_len = struct.unpack_from("<HH", blob, info.header_offset + 26)
    data_at = info.header_offset + 30 + name_len + extra_len
    for i in range(data_at + 4, data_at + 12):
        blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))
    return path


def duplicate_names_zip(folder: Path) -> Path:
    members = list(base_members().items()) + [("cat/0.png", png((0, 0, 255)))]
    members.append(("metadata.csv", metadata(BASE_ROWS)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns "Duplicate name"
        return write_zip(folder / "upload.zip", members)


def hard_link_tar(folder: Path) -> Path:
    """A tar with a hard link, named .zip: zip has no links, so only a mislabelled tar has one."""
    path = folder / "upload.zip"
    with tarfile.open(path, "w") as archive:
        data = png()
        info = tarfile.TarInfo("cat/0.png")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("cat/1.png")
        link.type, link.linkname = tarfile.LNKTYPE, "/etc/passwd"
        archive.addfile(link)
    return path


def file_and_folder_clash_zip(folder: Path) -> Path:
    members = base_members()
    members["cat"] = b"not a folder"
    return write_zip(folder / "upload.zip", list(members.items()))


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height gray pixels, with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFF_FFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (8, 8), c) for c in (RGB, (0, 0, 255), (0, 255, 0))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    image = Image.new("RGB", (8, 4), RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    return encode(image, "JPEG", exif=exif, quality=95)


def gray16() -> bytes:
    return encode(Image.new("I;16", (8, 8), 40000), "PNG")  # 40000 / 257 -> 156


def float_tiff() -> bytes:
    return encode(Image.new("F", (8, 8), 0.5), "TIFF")  # 0..1 floats -> 128


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def big_jpeg() -> bytes:
    """A 64x64 noisy JPEG: big enough that cutting it in half loses image data."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def corrupt_png() -> bytes:
    blob = bytearray(png())
    blob[45] ^= 0xFF  # inside the IDAT data: the chunk CRC no longer matches
    return bytes(blob)


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'
CAPTION_INJECTIONS = ("=HYPERLINK(\"http://x\",\"click\")", "+1+1", "-2+3", "@SUM(A1:A2)",
                      "\t=1+1", "\r=1+1", "'=quoted already")


def caption_injection_zip(folder: Path) -> Path:
    rows = [(path, split, label, _quoted(CAPTION_INJECTIONS[i % len(CAPTION_INJECTIONS)]))
            for i, (path, split, label) in enumerate(BASE_ROWS)]
    return dataset_zip(folder, csv=metadata(rows, header="path,split,label,caption"))


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def csv_zip(text: str) -> Callable[[Path], Path]:
    return lambda folder: dataset_zip(folder, csv=text.encode("utf-8"))


def csv_rows(rows, header="path,split,label") -> Callable[[Path], Path]:
    return lambda folder: dataset_zip(folder, csv=metadata(rows, header))


def folder_zip(members: dict[str, bytes]) -> Callable[[Path], Path]:
    return lambda folder: write_zip(folder / "upload.zip", members)


def _base(rows=BASE_ROWS):
    return [list(r) for r in rows]


# -- the corpus --------------------------------------------------------------------------------

# what to do is part of every rejection message; these regexes check both halves
_ZIP_AGAIN = r"(re-create|create|upload|unpack|save|remove|rename|split|keep|use)"

ARCHIVE_CASES = [
    UploadCase("parent-traversal", "archive", "rejected", r"'\.\./evil\.png'.*'\.\.'.*relative",
               with_member("../evil.png", png())),
    UploadCase("nested-traversal", "archive", "rejected", r"cat/\.\./\.\./evil\.png.*'\.\.'",
               with_member("cat/../../evil.png", png())),
    UploadCase("absolute-path", "archive", "rejected", r"'/tmp/evil\.png'.*absolute",
               with_member("/tmp/evil.png", png())),
    UploadCase("drive-letter", "archive", "rejected", r"'C:/evil\.png'.*absolute",
               with_member("C:/evil.png", png())),
    UploadCase("backslash-drive", "archive", "rejected", r"evil\.png.*absolute",
               with_member("C:\\evil.png", png())),
    UploadCase("symlink-member", "archive", "rejected",
               r"'cat/link\.png' is a symbolic link.*" + _ZIP_AGAIN,
               with_member("cat/link.png", b"/etc/passwd", mode=0o120777)),
    UploadCase("device-member", "archive", "rejected", r"'cat/dev\.png' is a special file",
               with_member("cat/dev.png", b"", mode=0o020644)),
    UploadCase("hard-link-tar", "archive", "rejected", r"not a readable zip file.*" + _ZIP_AGAIN,
               hard_link_tar),
    UploadCase("ratio-bomb", "archive", "rejected",
               r"'cat/padding\.bmp' is compressed \d+:1.*limit", ratio_bomb_zip),
    UploadCase("declared-huge", "archive", "rejected", r"unpacks to [\d,]+ bytes.*limit",
               declared_huge_zip),
    UploadCase("too-many-files", "archive", "rejected", r"80 files.*limit is 50.*" + _ZIP_AGAIN,
               too_many_files_zip, limits={"diffubias.archives.MAX_ARCHIVE_FILES": 50}),
    UploadCase("nested-zip", "archive", "rejected", r"'cat/more\.zip' is an archive.*unpack",
               with_member("cat/more.zip", b"PK\x05\x06" + bytes(18))),
    UploadCase("nested-tar-gz", "archive", "rejected", r"'data\.tar\.gz' is an archive",
               with_member("data.tar.gz", b"\x1f\x8b" + bytes(20))),
    UploadCase("encrypted-member", "archive", "rejected",
               r"'cat/secret\.png' is encrypted.*without a password",
               with_member("cat/secret.png", png(), flag_bits=0x1)),
    UploadCase("truncated-zip", "archive", "rejected", r"not a readable zip file.*again",
               truncated_zip),
    UploadCase("damaged-member", "archive", "rejected",
               r"'cat/big\.bmp' is damaged.*" + _ZIP_AGAIN, damaged_member_zip),
    UploadCase("duplicate-names", "archive", "rejected",
               r"'cat/0\.png' twice.*" + _ZIP_AGAIN, duplicate_names_zip),
    UploadCase("duplicate-after-normalising", "archive", "rejected", r"'cat/0\.png' twice",
               with_member("./cat/0.png", png())),
    UploadCase("non-utf8-name", "archive", "rejected",
               r"not UTF-8.*'caf\\xe9/0\.png'.*UTF-8 names", raw_name_zip("cafX", b"caf\xe9")),
    UploadCase("control-character-name", "archive", "rejected",
               r"control character.*" + _ZIP_AGAIN, with_member("cat/a\nb.png", png())),
    UploadCase("file-and-folder-clash", "archive", "rejected",
               r"'cat' is both a file and a folder", file_and_folder_clash_zip),
    UploadCase("name-too-long", "archive", "rejected", r"longer than 255 bytes",
               with_member("cat/" + "x" * 300 + ".png", png())),
    UploadCase("not-a-zip", "archive", "rejected", r"not a readable zip file",
               lambda folder: _write(folder / "upload.zip", png())),
    UploadCase("empty-zip", "archive", "rejected",
               r"no metadata\.csv and no class sub-folders", folder_zip({})),
    UploadCase("text-files-only", "archive", "rejected",
               r"no metadata\.csv and no images in its class folders \(found cats/a\.txt: not an "
               r"image file.*expected metadata\.csv.*<class>/<image> folders",
               folder_zip({"readme.txt": b"hi", "cats/a.txt": b"x"})),
    UploadCase("utf8-name-without-flag", "archive", "accepted", "",
               raw_name_zip("cafXX", "café".encode()), classes=("café", "dog")),
]

IMAGE_CASES = [
    # converted to RGB
    UploadCase("gray-16-bit", "image", "converted", "", odd_image_zip("g16.png", gray16()),
               member="odd/g16.png", rgb=(156, 156, 156)),
    UploadCase("cmyk-jpeg", "image", "converted", "",
               odd_image_zip("cmyk.jpg", encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)),
                                                "JPEG", quality=95)),
               member="odd/cmyk.jpg", rgb=(255, 0, 0)),
    UploadCase("palette", "image", "converted", "",
               odd_image_zip("p.png", encode(Image.new("RGB", (8, 8), RGB).quantize(4), "PNG")),
               member="odd/p.png", rgb=RGB),
    UploadCase("palette-transparent", "image", "converted", "",
               odd_image_zip("pt.gif", encode(Image.new("P", (8, 8), 0), "GIF", transparency=0)),
               member="odd/pt.gif", rgb=(0, 0, 0)),
    UploadCase("alpha", "image", "converted", "",
               odd_image_zip("rgba.png", png((200, 30, 40, 255), mode="RGBA")),
               member="odd/rgba.png", rgb=RGB),
    UploadCase("gray-alpha", "image", "converted", "",
               odd_image_zip("la.png", png((100, 255), mode="LA")),
               member="odd/la.png", rgb=(100, 100, 100)),
    UploadCase("grayscale", "image", "converted", "",
               odd_image_zip("l.png", png(77, mode="L")), member="odd/l.png", rgb=(77, 77, 77)),
    UploadCase("one-bit", "image", "converted", "",
               odd_image_zip("b.png", png(1, mode="1")), member="odd/b.png", rgb=(255, 255, 255)),
    UploadCase("float-tiff", "image", "converted", "", odd_image_zip("f.tif", float_tiff()),
               member="odd/f.tif", rgb=(128, 128, 128)),
    UploadCase("animated-gif", "image", "converted", "", odd_image_zip("a.gif", animated("GIF")),
               member="odd/a.gif", rgb=RGB),
    UploadCase("animated-webp", "image", "converted", "",
               odd_image_zip("a.webp", animated("WEBP")), member="odd/a.webp", rgb=RGB),
    UploadCase("exif-rotated", "image", "converted", "",
               odd_image_zip("r.jpg", exif_rotated_jpeg()), member="odd/r.jpg", rgb=RGB),
    UploadCase("lab-tiff", "image", "converted", "",
               odd_image_zip("lab.tif", encode(Image.new("LAB", (8, 8), (128, 128, 128)), "TIFF")),
               member="odd/lab.tif"),
    UploadCase("broken-exif", "image", "converted", "",
               odd_image_zip("exif.jpg", encode(Image.new("RGB", (8, 8), RGB), "JPEG", quality=95,
                                                exif=b"Exif\x00\x00MM\x00*garbage")),
               member="odd/exif.jpg", rgb=RGB),
    UploadCase("one-pixel", "image", "converted", "",
               odd_image_zip("tiny.png", png(size=(1, 1))), member="odd/tiny.png", rgb=RGB),
    UploadCase("wrong-extension", "image", "converted", "",
               odd_image_zip("really-a-jpeg.png", encode(Image.new("RGB", (8, 8), RGB), "JPEG",
                                                         quality=95)),
               member="odd/really-a-jpeg.png", rgb=RGB),
    # skipped and listed in the import report
    UploadCase("zero-bytes", "image", "skipped", r"empty file", odd_image_zip("zero.png", b""),
               member="odd/zero.png"),
    UploadCase("text-as-png", "image", "skipped", r"not an image.*PNG, JPEG",
               odd_image_zip("notes.png", b"just some text\n" * 10), member="odd/notes.png"),
    UploadCase("html-as-jpg", "image", "skipped", r"not an image",
               odd_image_zip("page.jpg", b"<html><script>alert(1)</script></html>"),
               member="odd/page.jpg"),
    UploadCase("truncated-png", "image", "skipped", r"truncated or damaged",
               odd_image_zip("cut.png", truncated(png(size=(64, 64)))), member="odd/cut.png"),
    UploadCase("truncated-jpeg", "image", "skipped", r"truncated or damaged",
               odd_image_zip("cut.jpg", truncated(big_jpeg())), member="odd/cut.jpg"),
    UploadCase("corrupt-png", "image", "skipped", r"truncated or damaged",
               odd_image_zip("bad.png", corrupt_png()), member="odd/bad.png"),
    UploadCase("pixel-bomb", "image", "skipped", r"900 megapixels.*limit of 64 megapixels",
               odd_image_zip("bomb.png", png_header(30000, 30000)), member="odd/bomb.png"),
    UploadCase("pixel-bomb-below-pil-limit", "image", "skipped", r"9000x9000 \(81 megapixels\).*limit of 50",
               odd_image_zip("big.png", png_header(9000, 9000)), member="odd/big.png",
               limits={"diffubias.decoding.MAX_IMAGE_PIXELS": 50_000_000}),
    UploadCase("short-image-data", "image", "skipped", r"truncated or damaged",
               odd_image_zip("short.png", png_header(300, 300)), member="odd/short.png"),
    UploadCase("damaged-header", "image", "skipped", r"truncated or damaged",
               odd_image_zip("head.png", png()[:20]), member="odd/head.png"),
    UploadCase("svg", "image", "skipped", r"SVG.*convert it to PNG",
               odd_image_zip("vector.svg", SVG), member="odd/vector.svg"),
    UploadCase("svg-as-png", "image", "skipped", r"SVG.*convert it to PNG",
               odd_image_zip("vector.png", SVG), member="odd/vector.png"),
    UploadCase("svg-in-image-folder", "image", "skipped", r"not an image file \(\.svg\)",
               folder_zip({**base_members(), "cat/vector.svg": SVG}), member="cat/vector.svg"),
]

METADATA_CASES = [
    UploadCase("missing-column", "metadata", "rejected",
               r"missing required column\(s\) split.*expected columns path, split, label",
               csv_rows([(p, lab) for p, _, lab in BASE_ROWS], header="path,label")),
    UploadCase("extra-columns", "metadata", "accepted", "",
               csv_rows([(*r, "x", "y") for r in BASE_ROWS], header="path,split,label,notes,x")),
    UploadCase("unknown-split", "metadata", "rejected",
               r"line 2: split 'training' is not one of train, valid, test",
               csv_rows([("cat/0.png", "training", "cat"), *BASE_ROWS[1:]])),
    UploadCase("label-only-in-test", "metadata", "rejected",
               r"label\(s\) 'bird' appear only in valid/test.*every label needs train images",
               csv_rows([*BASE_ROWS[:-1], ("dog/3.png", "test", "bird")])),
    UploadCase("missing-file", "metadata", "skipped", r"image file not found",
               csv_rows([*BASE_ROWS, ("cat/ghost.png", "train", "cat")]), member="cat/ghost.png"),
    UploadCase("path-escapes", "metadata", "rejected",
               r"line 10: path '\.\./\.\./etc/passwd' escapes the dataset folder",
               csv_rows([*BASE_ROWS, ("../../etc/passwd", "train", "cat")])),
    UploadCase("absolute-path-in-csv", "metadata", "rejected", r"'/etc/passwd' escapes",
               csv_rows([*BASE_ROWS, ("/etc/passwd", "train", "cat")])),
    UploadCase("metadata-as-image", "metadata", "skipped", r"not an image",
               csv_rows([*BASE_ROWS, ("metadata.csv", "train", "cat")]), member="metadata.csv"),
    UploadCase("class-with-no-images", "metadata", "skipped", r"image file not found",
               csv_rows([*BASE_ROWS, ("bird/0.png", "train", "bird")]), member="bird/0.png"),
    UploadCase("empty-class-folder", "metadata", "skipped", r"class folder without readable",
               folder_zip({**base_members(), "bird/": b""}), member="bird/"),
    UploadCase("class-folder-of-bad-images", "metadata", "skipped", r"class folder without",
               folder_zip({**base_members(), "bird/0.png": b"", "bird/1.png": b"x"}),
               member="bird/"),
    UploadCase("one-class", "metadata", "rejected", r"only one class.*at least 2 classes",
               csv_rows([r for r in BASE_ROWS if r[2] == "cat"])),
    UploadCase("one-class-folder", "metadata", "rejected", r"only one class folder",
               folder_zip({p: d for p, d in base_members().items() if p.startswith("cat/")})),
    UploadCase("class-folder-with-one-image", "metadata", "rejected", r"at least 2 images",
               folder_zip({**{p: d for p, d in base_members().items() if p.startswith("cat/")},
                           "dog/0.png": png()})),
    UploadCase("duplicate-rows", "metadata", "skipped", r"duplicate row \(line 10 repeats line 2\)",
               csv_rows([*BASE_ROWS, BASE_ROWS[0]]), member="cat/0.png"),
    UploadCase("header-only", "metadata", "rejected", r"has no rows", csv_rows([])),
    UploadCase("ragged-row", "metadata", "rejected",
               r"not a readable CSV file.*Expected 3 fields in line 10, saw 5",
               csv_rows([*BASE_ROWS, ("cat/0.png", "train", "cat", "x", "y")])),
    UploadCase("empty-metadata", "metadata", "rejected", r"metadata\.csv is empty", csv_zip("")),
    UploadCase("empty-label", "metadata", "rejected", r"line 2: empty label",
               csv_rows([("cat/0.png", "train", ""), *BASE_ROWS[1:]])),
    UploadCase("latin-1-metadata", "metadata", "rejected", r"not UTF-8.*save it as UTF-8",
               lambda folder: dataset_zip(folder, csv=metadata(BASE_ROWS).replace(
                   b"path,split,label", b"path,split,label,caption").replace(
                   b"cat\n", b"cat,caf\xe9\n", 1))),
    UploadCase("binary-metadata", "metadata", "rejected", r"metadata\.csv",
               lambda folder: dataset_zip(folder, csv=png())),
    UploadCase("caption-injection", "metadata", "accepted", "", caption_injection_zip),
]

UPLOAD_CASES = ARCHIVE_CASES + IMAGE_CASES + METADATA_CASES

# RunConfig settings that must be refused: (id, overrides, message regex)
PARAMETER_CASES = [
    ("zero-epochs", {"biased_epochs": 0}, r"biased_epochs must be an integer from 1 to"),
    ("negative-epochs", {"debias_epochs": -3}, r"debias_epochs must be an integer from 1"),
    ("absurd-epochs", {"biased_epochs": 10**9}, r"biased_epochs .* to 1,000; got 1000000000"),
    ("nan-epochs", {"biased_epochs": math.nan}, r"biased_epochs must be an integer"),
    ("fractional-epochs", {"debias_epochs": 2.5}, r"debias_epochs must be an integer"),
    ("bool-epochs", {"biased_epochs": True}, r"biased_epochs must be an integer"),
    ("absurd-images-per-prompt", {"images_per_prompt": 10**6}, r"images_per_prompt .* to 64"),
    ("zero-images-per-prompt", {"images_per_prompt": 0}, r"images_per_prompt"),
    ("zero-batch", {"batch_size": 0}, r"batch_size"),
    ("absurd-batch", {"batch_size": 10**7}, r"batch_size .* to 4,096"),
    ("zero-lr", {"lr": 0.0}, r"lr must be a number in \(0, 10\]"),
    ("nan-lr", {"lr": math.nan}, r"lr must be a number"),
    ("inf-lr", {"lr": math.inf}, r"lr must be a number"),
    ("gce-q-zero", {"gce_q": 0.0}, r"gce_q must be a number in \(0, 1\]"),
    ("gce-q-nan", {"gce_q": math.nan}, r"gce_q"),
    ("top-k-zero", {"top_k": 0}, r"top_k must be"),
    ("top-k-negative", {"top_k": -5}, r"top_k must be"),
    ("top-k-nan", {"top_k": math.nan}, r"top_k must be"),
    ("top-k-inf", {"top_k": math.inf}, r"top_k must be"),
    ("top-k-fractional-count", {"top_k": 2.5}, r"top_k .* whole number"),
    ("conflict-ratio-one", {"conflict_ratio": 1.0}, r"conflict_ratio"),
    ("conflict-ratio-nan", {"conflict_ratio": math.nan}, r"conflict_ratio"),
    ("negative-image-size", {"image_size": -1}, r"image_size"),
    ("absurd-image-size", {"image_size": 100_000}, r"image_size .* to 1,024"),
    ("zero-width", {"width": 0}, r"width"),
    ("absurd-biased-width", {"biased_width": 10**6}, r"biased_width"),
    ("absurd-captions", {"captions_per_image": 1000}, r"captions_per_image"),
    ("absurd-cam-samples", {"cam_samples": 10**9}, r"cam_samples"),
    ("negative-max-images", {"max_images": -1}, r"max_images"),
    ("absurd-max-images", {"max_images": 10**12}, r"max_images"),
    ("negative-steps", {"gen_steps": -1}, r"gen_steps"),
    ("absurd-steps", {"gen_steps": 10**6}, r"gen_steps"),
    ("nan-guidance", {"guidance_scale": math.nan}, r"guidance_scale"),
    ("absurd-guidance", {"guidance_scale": 1e6}, r"guidance_scale"),
    ("odd-gen-width", {"gen_width": 13}, r"gen_width .* multiple of 8"),
    ("huge-gen-height", {"gen_height": 100_000}, r"gen_height"),
    ("negative-seed", {"seed": -1}, r"seed must be an integer from 0"),
    ("negative-keywords", {"keywords_top_n": -1}, r"keywords_top_n"),
    ("long-negative-prompt", {"negative_prompt": "x " * 2500}, r"negative_prompt is 5,000 char"),
    ("long-instruction", {"caption_instruction": "y" * 5000}, r"caption_instruction is 5,000"),
    ("unknown-baseline", {"baselines": ("magic",)}, r"unknown baselines"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
