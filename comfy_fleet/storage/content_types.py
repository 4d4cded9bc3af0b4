"""The content type of an output: proven by its first bytes, else guessed from its extension."""

from __future__ import annotations

#: Content type of bytes we cannot identify.
OCTET_STREAM = "application/octet-stream"

_BY_EXTENSION: dict[str, str] = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "svg": "image/svg+xml",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "m4a": "audio/mp4",
    "txt": "text/plain",
    "json": "application/json",
}


#: MPEG audio frame headers without an ID3 tag (MPEG-1/2 layer III, with or without CRC).
_MP3_FRAME_SYNC = frozenset({b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xfa"})


def _sniff(head: bytes) -> str | None:
    """The content type that ``head`` (the first bytes of a file) proves, if any."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or head[:2] in _MP3_FRAME_SYNC:
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "video/quicktime"
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        # EBML: both WebM and Matroska; the doctype says which.
        return "video/x-matroska" if b"matroska" in head[:64] else "video/webm"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text[:1024]):
        return "image/svg+xml"
    return None


def content_type_for(filename: str, head: bytes) -> str:
    """The content type of a file: its magic bytes first, then its extension, else octet-stream.

    ``head`` needs only the first few hundred bytes (the whole file is fine too).
    """
    sniffed = _sniff(head)
    if sniffed is not None:
        return sniffed
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return _BY_EXTENSION.get(ext, OCTET_STREAM)
