"""Safe extraction of an uploaded .zip: every member is checked against the limits below before
anything is written, and the extracted folder appears whole or not at all.

Knows: zip files, what makes a member unsafe (absolute paths, `..`, links, special files,
encryption, nested archives, duplicate, overlong or non-UTF-8 names, zip bombs) and where an
archive is extracted (a folder named by the hash of its bytes, so a second upload is free). Does
not know: what the extracted files mean (the dataset layouts are `metadata_csv` and
`image_folder`; `dataset_sources` finds the dataset root inside the extracted folder).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from diffubias.relative_paths import safe_relative_path

# Limits on an upload, each refused with a message before anything is written. An archive member
# is a file to extract.
MAX_ARCHIVE_FILES = 300_000  # CelebA, the largest common bias benchmark, has ~203,000 images
MAX_UNPACKED_BYTES = 64 << 30
# Images are stored compressed (about 1:1 in a zip), CSVs pack ~10:1 and raw BMP/TIFF masks up
# to ~100:1; a deflate bomb packs ~1000:1. Files under RATIO_CHECK_BYTES may pack tighter (a
# blank mask): a bomb has to be big.
MAX_COMPRESSION_RATIO = 200
RATIO_CHECK_BYTES = 1 << 20
MAX_NAME_BYTES = 255  # one path component, as most file systems allow
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".tbz2",
                    ".txz", ".tar.gz")
_READABLE_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                         zipfile.ZIP_LZMA)


def extract_zip(zip_path: Path, *, cache_dir: Path) -> Path:
    """Extract `zip_path` once into `extracted_folder(zip_path, cache_dir)` and return it.

    Every member is checked before anything is written (`_checked_members`: no absolute paths,
    `..`, links, special files, encryption, nested archives, duplicate or non-UTF-8 names, and
    the file-count, size and compression-ratio limits); only regular files and folders are
    written. Extraction goes to a temporary folder that is renamed into place, so an
    interrupted or refused run leaves no half-written dataset behind.
    """
    zip_path = Path(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, UnicodeDecodeError, EOFError, OSError) as exc:
        raise ValueError(
            f"{zip_path.name} is not a readable zip file ({exc}); it may be truncated or another "
            "kind of archive: create a .zip and upload it again"
        ) from exc
    with archive:
        members = _checked_members(archive, zip_path.name)
        target = extracted_folder(zip_path, cache_dir=cache_dir)
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        needed, free = (
            sum(info.file_size for info, _ in members),
            shutil.disk_usage(target.parent).free,
        )
        if needed > free:
            raise ValueError(
                f"{zip_path.name} unpacks to {needed:,} bytes but the workspace has {free:,} "
                "free; free some space or upload a smaller dataset"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            for info, name in members:
                _extract_member(archive, info, tmp / name, zip_path.name, name)
            tmp.chmod(0o755)
            _rename_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def extracted_folder(zip_path: Path, *, cache_dir: Path) -> Path:
    """Where `extract_zip` puts `zip_path`: `cache_dir/zips/<hash of its bytes>/`."""
    return Path(cache_dir) / "zips" / _file_digest(Path(zip_path))


def _checked_members(archive: zipfile.ZipFile, zip_name: str) -> list[tuple[zipfile.ZipInfo, str]]:
    """(member, its normalised relative path) for every member to extract; ValueError naming
    the first member that is unsafe or over a limit, and what to do about it."""
    infos = archive.infolist()
    files = [info for info in infos if not info.is_dir()]
    if len(infos) > MAX_ARCHIVE_FILES:
        raise ValueError(
            f"{zip_name} holds {len(infos):,} files and folders; the limit is "
            f"{MAX_ARCHIVE_FILES:,}: split "
            "the dataset into smaller uploads, or open it as a folder under --data-root"
        )
    total = sum(info.file_size for info in files)
    if total > MAX_UNPACKED_BYTES:
        raise ValueError(
            f"{zip_name} unpacks to {total:,} bytes, over the limit of {MAX_UNPACKED_BYTES:,}: "
            "split the dataset into smaller uploads, or open it as a folder under --data-root"
        )
    members: list[tuple[zipfile.ZipInfo, str]] = []
    seen: set[str] = set()
    for info in infos:
        name = _member_name(info, zip_name)
        if name is None:
            continue  # the archive root itself ("/" or ".")
        where = f"{zip_name}: {name!r}"
        if info.is_dir():
            members.append((info, name))
            continue
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise ValueError(
                f"{where} is a symbolic link; links are not extracted: re-create the zip with "
                "the files themselves (zip without -y)"
            )
        if kind and kind != stat.S_IFREG:
            raise ValueError(
                f"{where} is a special file (device, pipe or socket): remove it and re-create "
                "the zip"
            )
        if info.flag_bits & 0x1:
            raise ValueError(f"{where} is encrypted: re-create the zip without a password")
        if info.compress_type not in _READABLE_COMPRESSION:
            raise ValueError(
                f"{where} uses compression method {info.compress_type} (e.g. Deflate64 or AES), "
                "which cannot be read: re-create the zip with standard deflate compression"
            )
        if name.lower().endswith(ARCHIVE_SUFFIXES):
            raise ValueError(
                f"{where} is an archive inside the archive: unpack it and zip its files into "
                "the one upload"
            )
        if name in seen:
            raise ValueError(f"{zip_name} holds {name!r} twice: keep one copy and re-create the zip")
        seen.add(name)
        if info.file_size > RATIO_CHECK_BYTES and (
            info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
        ):
            ratio = info.file_size // max(info.compress_size, 1)
            raise ValueError(
                f"{where} is compressed {ratio}:1, above the limit of "
                f"{MAX_COMPRESSION_RATIO}:1 that guards against zip bombs; images and CSVs never "
                "pack that tightly: remove the file and re-create the zip"
            )
        members.append((info, name))
    packed = sum(info.compress_size for info in files)
    if total > RATIO_CHECK_BYTES and total > MAX_COMPRESSION_RATIO * max(packed, 1):
        raise ValueError(
            f"{zip_name} is compressed {total // max(packed, 1)}:1 overall, above the limit of "
            f"{MAX_COMPRESSION_RATIO}:1 that guards against zip bombs: re-create the zip from "
            "the images and metadata.csv only"
        )
    folders = {str(PurePosixPath(name).parent) for name in seen} | {
        name for info, name in members if info.is_dir()
    }
    folders |= {str(parent) for folder in list(folders) for parent in PurePosixPath(folder).parents}
    clash = sorted(seen & folders)
    if clash:
        raise ValueError(
            f"{zip_name}: {clash[0]!r} is both a file and a folder: rename one and re-create "
            "the zip"
        )
    return members


def _member_name(info: zipfile.ZipInfo, zip_name: str) -> str | None:
    """The member's path, normalised and checked; None for the archive root."""
    raw = info.orig_filename
    if not info.flag_bits & 0x800:  # no UTF-8 flag: zipfile decoded the bytes as cp437
        raw_bytes = raw.encode("cp437")
        try:
            raw = raw_bytes.decode("utf-8")  # most tools write UTF-8 without setting the flag
        except UnicodeDecodeError:
            raise ValueError(
                f"{zip_name}: a member name is not UTF-8 ({raw_bytes!r}); the zip was made with "
                "a legacy code page: re-create it with UTF-8 names (7-Zip, Info-ZIP zip or "
                "Python's zipfile write UTF-8 names)"
            ) from None
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise ValueError(
            f"{zip_name}: member name {raw!r} contains a control character: rename the file and "
            "re-create the zip"
        )
    if raw.replace("\\", "/").strip("/") in ("", "."):
        return None
    name = safe_relative_path(raw)
    if name is None:
        raise ValueError(
            f"{zip_name} has member {raw!r} with an absolute path or '..'; expected paths "
            "relative to the archive root: re-create the zip from inside the dataset folder"
        )
    long = [part for part in name.split("/") if len(part.encode()) > MAX_NAME_BYTES]
    if long:
        raise ValueError(
            f"{zip_name}: member {raw[:80]!r}... has a name longer than {MAX_NAME_BYTES} bytes: "
            "rename the file and re-create the zip"
        )
    return name


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                    zip_name: str, name: str) -> None:
    """Write one checked member as a plain file or folder (never a link, never its mode)."""
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # zipfile stops at the declared size and checks the CRC: a member cannot write more
        with archive.open(info) as source, open(target, "xb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ValueError(
            f"{zip_name}: {name!r} is damaged ({exc}): re-create the zip and upload it again"
        ) from exc


def _file_digest(path: Path) -> str:
    info = path.stat()  # the app asks twice per upload (where to extract, then extracting)
    return _digest_of(str(path.resolve()), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:24]


def _rename_into_place(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; if another process got there first, keep theirs."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
