#!/usr/bin/env python3
"""Writes the hand-written seed corpora under fuzz/corpus/<target>/ (run from anywhere).

Each file is one realistic input in the layout its target reads (see the target's
leading comment). Journal lines are built as `store::journal::encode_line` builds them:
compact JSON with `op` first, then `,"crc":N` with N the CRC-32 of the JSON without it.
"""
import json
import pathlib
import struct
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "corpus"
CURL = b"------------------------d74496d66958873e"
WEBKIT = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
FIREFOX = b"---------------------------9051914041544843365972754266"
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffdb004300") + b"\r\n--" + bytes(range(40))
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + b"\x00" * 24


def write(target, name, data):
    path = ROOT / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def part(boundary, disposition, content_type, data):
    head = b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n"
    if content_type:
        head += b"Content-Type: " + content_type + b"\r\n"
    return head + b"\r\n" + data + b"\r\n"


def multipart():
    # `curl -F file=@photo.jpg -F comment=hi`, read in 4 KiB socket chunks.
    body = part(CURL, b'form-data; name="file"; filename="photo.jpg"', b"image/jpeg", JPEG)
    body += part(CURL, b'form-data; name="comment"', None, b"hi")
    body += b"--" + CURL + b"--\r\n"
    write("multipart", "curl-photo", bytes([0, 0xFF, 0xFF, 0xFF]) + body)
    # A browser form (Chrome) with a non-ASCII name, plus `filename*` as some SDKs send.
    body = part(
        WEBKIT,
        b"form-data; name=\"file\"; filename=\"caf\xc3\xa9 & cr\xc3\xa8me.png\"; "
        b"filename*=UTF-8''caf%C3%A9%20%26%20cr%C3%A8me.png",
        b"image/png",
        PNG,
    )
    body += part(WEBKIT, b'form-data; name="category"', None, b"photos/summer")
    body += b"--" + WEBKIT + b"--\r\n"
    write("multipart", "browser-filename-star", bytes([1, 7, 13, 1]) + body)
    # Firefox, two files in one request, odd chunk sizes.
    body = part(FIREFOX, b'form-data; name="file"; filename="a.txt"', b"text/plain", b"hello")
    body += part(
        FIREFOX, b'form-data; name="file"; filename="say \\"hi\\".pdf"', b"application/pdf",
        b"%PDF-1.7\n" + b"x" * 100,
    )
    body += b"--" + FIREFOX + b"--\r\n"
    write("multipart", "firefox-two-files", bytes([2, 2, 63, 5]) + body)
    # Preamble, transport padding, a part without headers, an epilogue; tiny limits.
    body = b"preamble\r\n--XyZ \t\r\n\r\nraw\r\n--XyZ--\r\nepilogue"
    write("multipart", "preamble-padding-epilogue-tiny-limits", bytes([0x43, 40, 60, 200]) + body)
    # A boundary taken from the input (6 bytes), truncated before the final boundary.
    body = b"abc123" + part(b"abc123", b'form-data; name="file"; filename="../../etc/passwd"',
                            b"text/plain", b"root:x:0:0")
    write("multipart", "own-boundary-truncated", bytes([0x80 | 5, 3, 3, 3]) + body)
    # The part-header bomb in miniature: a header that never ends.
    write("multipart", "endless-part-header", bytes([0x43, 1, 100, 1]) + b"--XyZ\r\nX: " + b"a" * 200)


def disposition():
    values = [
        b'form-data; name="file"; filename="photo1.jpg"',
        b"form-data; name=\"file\"; filename=\"x.jpg\"; filename*=UTF-8''caf%C3%A9.jpg",
        b'form-data; name="file"; filename="say \\"hi\\"; a=b.txt"',
        b'form-data; name="file"; filename="../../etc/passwd"',
        b"form-data; name=file; filename*=iso-8859-1'en'%E9t%E9%202024.png",
        b'form-data; name="file"; filename="C:\\\\Users\\\\me\\\\Desktop\\\\IMG_0001.HEIC"',
        b'form-data; name="file"; filename="%22q%22 Summer Vacation 2024!.mov"',
    ]
    for i, value in enumerate(values):
        write("disposition", f"header-{i}", value)


def query():
    values = [
        b"from=2026-01-15&to=2026-01-31",
        b"name=vacation&ext=jpg&media_type=image&limit=20",
        b"from=2026-01-15T10:30:00Z&to=2026-01-15T12:30:00%2B02:00",
        b"from=2026-01-15T1234567%C3%A912345",
        b"category=photos%2Fsummer&offset=50&limit=1000&name=caf%C3%A9+cr%C3%A8me",
        b"to=2026-01-15T08:30:00.5-02:00",
    ]
    for i, value in enumerate(values):
        write("query", f"query-{i}", value)


def range_():
    etag = b'"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"'
    date = b"Thu, 01 Jan 2026 00:00:00 GMT"
    cases = [
        (10 << 20, 0b1000, [b"", b"", b"", b"bytes=0-1023"]),
        (1000, 0b1100, [b"", b"", etag, b"bytes=500-"]),
        (1000, 0b0001, [b'W/' + etag + b', "other"', b"", b"", b""]),
        (1000, 0b0010, [b"", date, b"", b""]),
        (1000, 0b1000, [b"", b"", b"", b"bytes=-500"]),
        (1000, 0b1100, [b"", b"", date, b"bytes=100-199"]),
        (1000, 0b1000, [b"", b"", b"", b"bytes=0-0,5-9"]),
        (0, 0b11000, [b"", b"", b"", b"bytes=0-"]),
    ]
    for i, (size, mask, values) in enumerate(cases):
        write("range", f"range-{i}", struct.pack("<Q", size) + bytes([mask]) + b"\n".join(values))


def encode_line(entry):
    text = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()
    crc = zlib.crc32(text)
    return text[:-1] + b',"crc":' + str(crc).encode() + b"}\n"


def journal():
    def put(n, name):
        h = f"{n:02x}" * 32
        return {
            "op": "put", "path": f"images/photos/{h[:2]}/{h[2:4]}/photo_{h[:8]}.jpg",
            "mime_type": "image/jpeg", "media_type": "image", "category": "photos",
            "hash": h, "size": 1000 + n, "original_name": name, "comment": "a \"quoted\"\n",
            "uploaded_at": "2026-01-15T10:30:00.123456789Z",
        }

    def delete(n):
        h = f"{n:02x}" * 32
        return {"op": "delete", "hash": h, "path": f"images/photos/{h[:8]}.jpg",
                "deleted_at": "2026-01-16T08:00:00Z"}

    lines = [encode_line(put(1, "photo.jpg")), encode_line(put(2, "café.jpg")),
             encode_line(delete(1))]
    corrupt = bytearray(lines[1])
    corrupt[20] ^= 1
    # The line decoder (`journal`) and whole-image replay (`journal_replay`) share seeds.
    for target in ["journal", "journal_replay"]:
        write(target, "clean", b"".join(lines))
        write(target, "torn-tail", b"".join(lines) + lines[0][:37])
        write(target, "corrupt-middle", lines[0] + bytes(corrupt) + lines[2])
        write(target, "one-put", lines[1])


def http_errors():
    date = b"\r\ndate: Wed, 02 Dec 2026 00:15:00 GMT\r\n\r\n"
    for status, reason in [(400, b"Bad Request"), (414, b"URI Too Long"),
                           (431, b"Request Header Fields Too Large")]:
        write("http_errors", f"hyper-{status}",
              b"HTTP/1.1 %d %s\r\nconnection: close\r\ncontent-length: 0" % (status, reason) + date)
    write("http_errors", "ours-400",
          b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
          b"content-length: 27\r\nconnection: close\r\n\r\n")


multipart()
disposition()
query()
range_()
journal()
http_errors()
