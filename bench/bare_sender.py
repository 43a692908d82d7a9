#!/usr/bin/env python3
"""A bare Python upload client, the ingest floor's reference for our upload path (bench_upload.py part 5).

It sends every .jpg under a folder to an Immich-compatible server as our uploader's requests do (the same
request line, headers in the same order, form fields in the same order, a 70-character boundary, one
kept-alive connection per worker), from `--parallel` threads on raw sockets, and does nothing else: no
database, no bulk check, no hashing, no link rule, no sidecar look, no timeouts, no retries, no record of
what happened beyond a count. What differs: its own User-Agent, one boundary per connection (ours: one per
request), both dates from the file's mtime, and its three sends a request go without TCP_NODELAY (ours with
it; no difference measured either way). It reads each file in one call, for photo-sized files.
What it takes is what any Python client on these cores pays for sending; what our upload_files.py takes beyond
it is the cost of our checks and records. With `--hashing N`, N threads first read each file and take its
SHA-256 and SHA-1 (whole, as our scan hashes a photo smaller than its chunk), and a sender gets it only then:
a bare sync, what a Python client that fingerprints what it sends can do here, against which our
sync_upload.py's scan, checks and records are measured. Prints `created N of M`; exit status 1 when any was
not created.

    python bench/bare_sender.py URL API_KEY FOLDER [--parallel 8] [--hashing 0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import socket
import sys
import threading
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path


def form_field(boundary: str, name: str, value: str) -> bytes:
    return f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()


def send_all(host: str, port: int, key: str, files: queue.Queue[Path | None], created: list[int]) -> None:
    """One worker: its own connection, one request at a time, until it takes None from the queue."""
    boundary = os.urandom(35).hex()
    sock = socket.create_connection((host, port))
    answers = sock.makefile("rb")
    buffer = bytearray()  # grown to the largest file yet: each is read whole, in one call
    mine = 0
    try:
        while True:
            path = files.get()
            if path is None:
                break
            fd = os.open(path, os.O_RDONLY)
            try:
                st = os.fstat(fd)
                if len(buffer) < st.st_size:
                    buffer = bytearray(st.st_size)
                size = os.readv(fd, [memoryview(buffer)[: st.st_size]])
                mtime = st.st_mtime
            finally:
                os.close(fd)
            when = datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            fields = b"".join(
                form_field(boundary, name, value)
                for name, value in (
                    ("fileCreatedAt", when),
                    ("fileModifiedAt", when),
                    ("isFavorite", "false"),
                )
            )
            part = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="assetData"; filename="{path.name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            tail = b"\r\n" + form_field(boundary, "filename", path.name) + f"--{boundary}--\r\n".encode()
            length = len(fields) + len(part) + size + len(tail)
            head = (
                f"POST /api/assets HTTP/1.1\r\nHost: {host}:{port}\r\nAccept-Encoding: identity\r\n"
                f"x-api-key: {key}\r\nUser-Agent: bare-sender\r\nAccept: application/json\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n"
            ).encode()
            sock.sendall(head + fields + part)
            sock.sendall(memoryview(buffer)[:size])
            sock.sendall(tail)
            status = answers.readline()
            body_length = 0
            while (line := answers.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    body_length = int(value)
            answers.read(body_length)
            mine += status.split(b" ")[1:2] == [b"201"]
    finally:
        sock.close()
        created.append(mine)


def hash_all(to_hash: queue.Queue[Path | None], to_send: queue.Queue[Path | None]) -> None:
    """One hashing thread: each file read whole and its SHA-256 and SHA-1 taken, then handed to the senders."""
    while (path := to_hash.get()) is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            data = os.read(fd, size + 1)
        finally:
            os.close(fd)
        hashlib.sha256(data).hexdigest()
        hashlib.sha1(data).hexdigest()
        to_send.put(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("api_key")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--hashing", type=int, default=0, help="threads hashing each file before it is sent")
    args = parser.parse_args(argv)
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        parser.error("an http:// URL (this reference speaks no TLS)")
    files: queue.Queue[Path | None] = queue.Queue()
    to_hash: queue.Queue[Path | None] = queue.Queue() if args.hashing else files
    created: list[int] = []
    workers = [
        threading.Thread(target=send_all, args=(url.hostname, url.port or 80, args.api_key, files, created))
        for _ in range(args.parallel)
    ]
    hashers = [threading.Thread(target=hash_all, args=(to_hash, files)) for _ in range(args.hashing)]
    for thread in workers + hashers:
        thread.start()
    paths = sorted(args.folder.rglob("*.jpg"))
    for path in paths:
        to_hash.put(path)
    for _ in hashers:
        to_hash.put(None)
    for hasher in hashers:
        hasher.join()
    for _ in workers:
        files.put(None)
    for worker in workers:
        worker.join()
    print(f"created {sum(created)} of {len(paths)}")
    return 0 if sum(created) == len(paths) else 1


if __name__ == "__main__":
    sys.exit(main())
