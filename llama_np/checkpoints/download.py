"""Fetch a checkpoint from the Hugging Face hub into weights/: plain HTTPS, resumable.

    llama-np download stories15M                          # a name from KNOWN_CHECKPOINTS
    llama-np download TinyLlama/TinyLlama-1.1B-Chat-v1.0  # any hub repo in the HF layout

Each file comes from `{endpoint}/{repo}/resolve/{revision}/{file}` and is written to
`<file>.part`; only when its size checks out is it renamed into place, so a file without the
`.part` suffix is complete. Running the command again skips complete files and resumes a
`.part` with an HTTP Range request. Expected sizes (and, for weights, sha256 digests) come
from the hub's file listing, `{endpoint}/api/models/{repo}/tree/{revision}`, and from the
response headers.

Every file name that comes from the registry, a safetensors index or the server is checked
to stay inside the target directory before anything is written.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import DownloadError

try:
    import fcntl  # POSIX: the lock that keeps two downloads out of one directory
except ImportError:  # Windows: downloads are not locked
    fcntl = None
from ..validate import HUB_LISTING, Map, Obj, Str, parse_json, read_json, validate

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT = 30.0  # seconds a connect or a read may stall before the request fails
CHUNK = 1 << 20  # bytes per read while streaming a file to disk
MAX_UNSIZED = 64 << 30  # cap for a response that announces no size, so a read loop always ends
MIN_RATE = 10_000.0  # bytes/s: slower than this over RATE_WINDOW seconds, a transfer is abandoned
RATE_WINDOW = 30.0  # seconds
MAX_LISTING = 16 << 20  # bytes of the hub's file listing (a big repo's is ~100 kB)
# A safetensors index as the downloader needs it; each shard name is checked by safe_path.
INDEX = Obj({"weight_map": Map(Str(1024))})

# llama2.c's tokenizer.bin (the Llama 2 vocabulary in llama2.c's own format) is not on the hub:
# karpathy/tinyllamas holds only the weights, so it comes from the llama2.c GitHub repository.
LLAMA2C_TOKENIZER_URL = "https://raw.githubusercontent.com/karpathy/llama2.c/master/tokenizer.bin"

# Files of a Hugging Face transformers model directory, besides the weights.
HF_REQUIRED = ("config.json",)
HF_OPTIONAL = (
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
)
HF_INDEX = "model.safetensors.index.json"
HF_SINGLE = "model.safetensors"
# The weights, in the order looked for: safetensors, else PyTorch's files (older uploads)
HF_WEIGHTS = ((HF_INDEX, HF_SINGLE), ("pytorch_model.bin.index.json", "pytorch_model.bin"))


@dataclass(frozen=True)
class KnownCheckpoint:
    """A checkpoint `llama-np download NAME` knows by name."""

    repo: str  # hub repo id, owner/name
    files: tuple[str, ...] = ()  # files to fetch from the repo; empty = the HF model layout
    urls: tuple[tuple[str, str], ...] = ()  # (file name, URL) fetched from outside the hub
    gated: bool = False  # needs HF_TOKEN and the license accepted on the model page


def _stories(size: str) -> KnownCheckpoint:
    return KnownCheckpoint(
        "karpathy/tinyllamas",
        files=(f"stories{size}.bin",),
        urls=(("tokenizer.bin", LLAMA2C_TOKENIZER_URL),),
    )


KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    "stories15M": _stories("15M"),
    "stories42M": _stories("42M"),
    "stories110M": _stories("110M"),
    "TinyLlama-1.1B-Chat": KnownCheckpoint("TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
    "Llama-3.2-1B-Instruct": KnownCheckpoint("meta-llama/Llama-3.2-1B-Instruct", gated=True),
    "SmolLM2-135M-Instruct": KnownCheckpoint("HuggingFaceTB/SmolLM2-135M-Instruct"),
}


class RemoteFile(NamedTuple):
    """A file in the hub's listing of a repo."""

    size: int  # bytes
    sha256: str | None  # hex digest, given for large (LFS) files: weights, tokenizer.model


# Hub repo ids: owner/name, each part starting with a letter or digit (so never "." or "..").
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def download(
    name_or_repo: str,
    directory: str | Path = "weights",
    *,
    revision: str = "main",
    endpoint: str | None = None,
    token: str | None = None,
    quiet: bool = False,
    timeout: float = TIMEOUT,
    deadline: float | None = None,
    min_rate: float = MIN_RATE,
) -> Path:
    """Fetch a known checkpoint, or a hub repo `owner/name`, into `directory/<name>`.

    The endpoint is `endpoint`, else $HF_ENDPOINT, else https://huggingface.co; the token is
    `token`, else $HF_TOKEN. Returns the checkpoint's directory.

    Bounded in time: a connect or read may stall `timeout` seconds; a transfer slower than
    `min_rate` bytes/s over RATE_WINDOW seconds is abandoned, and so is the whole download
    after `deadline` seconds (if given). Partial files are kept: run again to resume. One
    download at a time per directory (a lock on the directory).
    """
    budget = Budget(
        timeout, None if deadline is None else time.monotonic() + deadline, deadline, min_rate
    )
    local_name, known = resolve_name(name_or_repo)
    endpoint = _check_endpoint(
        (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    )
    token = token if token is not None else (os.environ.get("HF_TOKEN") or None)
    if known.gated and not token:
        raise DownloadError(
            f"{local_name} is gated: accept its license on {endpoint}/{known.repo}, create a "
            f"token at https://huggingface.co/settings/tokens and set HF_TOKEN to it"
        )
    target = safe_path(Path(directory), local_name, "checkpoint name")
    hub = Hub(endpoint, known.repo, revision, token, budget, quiet)

    files = hub.list_files()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{target}: cannot create the directory: {e.strerror}") from None
    with _DirectoryLock(target):
        if known.files:
            for name in known.files:
                hub.fetch(name, safe_path(target, name, "registry"), files, required=True)
        else:
            _fetch_hf_model(hub, target, files)
        for name, url in known.urls:
            dest = safe_path(target, name, "registry")
            if dest.exists():  # renamed into place only once complete
                _say(quiet, f"{dest}: already complete ({_size(dest.stat().st_size)})")
            else:
                fetch(url, dest, None, budget=budget, quiet=quiet)
    return target


def _check_endpoint(endpoint: str) -> str:
    """`endpoint` if it is an http(s) URL with a host (and a valid port, if any)."""
    where = f"endpoint {endpoint!r} (--endpoint or HF_ENDPOINT)"
    try:
        parts = urllib.parse.urlsplit(endpoint)
        parts.port  # noqa: B018 (raises ValueError for a port that is not 0..65535)
    except ValueError as e:  # "Invalid IPv6 URL": an unclosed "[", ...
        raise DownloadError(f"{where}: not a valid URL ({e}); expected http(s)://host") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"{where}: expected an http(s):// URL with a host")
    return endpoint


@dataclass(frozen=True)
class Budget:
    """How long a download may take."""

    timeout: float  # seconds a connect or a single read may stall
    deadline: float | None  # time.monotonic() by which the whole download must end
    seconds: float | None  # the deadline as given, for messages
    min_rate: float  # bytes/s, averaged over RATE_WINDOW seconds of a transfer

    def socket_timeout(self, url: str) -> float:
        """The timeout for the next request: the per-read one, shortened by the deadline."""
        if self.deadline is None:
            return self.timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DownloadError(
                f"{url}: the download took longer than its deadline of {self.seconds:g} s; "
                f"run the same command again to resume (finished files are kept)"
            )
        return min(self.timeout, left)


class _DirectoryLock:
    """An exclusive lock on `directory` while a download writes there, so that two downloads
    into one directory cannot interleave their writes to the same `.part` files. It is a
    flock on the directory itself: no lock file, and the OS releases it when the process
    ends, so a crash leaves nothing stale."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd = -1

    def __enter__(self) -> _DirectoryLock:
        if fcntl is None:
            return self
        try:
            self.fd = os.open(self.directory, os.O_RDONLY)
        except OSError as e:
            raise DownloadError(f"{self.directory}: cannot open: {e.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise DownloadError(
                f"{self.directory}: another download into this directory is running; wait for "
                f"it to finish (or stop it), then run the command again"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock


def resolve_name(name_or_repo: str) -> tuple[str, KnownCheckpoint]:
    """(local directory name, what to fetch) for a registry name or a hub repo id."""
    by_lower = {name.lower(): name for name in KNOWN_CHECKPOINTS}
    if name_or_repo.lower() in by_lower:
        name = by_lower[name_or_repo.lower()]
        return name, KNOWN_CHECKPOINTS[name]
    if not _REPO_ID.fullmatch(name_or_repo):
        raise DownloadError(
            f"{name_or_repo!r}: not a known checkpoint name ({', '.join(KNOWN_CHECKPOINTS)}) "
            f"nor a hub repo id of the form owner/name"
        )
    return name_or_repo.split("/")[1], KnownCheckpoint(name_or_repo)


def safe_path(target: Path, name: object, source: str) -> Path:
    """`target/name`, refusing any name that could resolve outside `target`.

    `name` comes from the registry, an index JSON or a server, so it is untrusted: it must be
    a relative path with forward slashes and no "..", ".", empty parts, backslashes, colons
    (drive letters, Windows streams) or NUL bytes.
    """
    ok = isinstance(name, str) and name and not name.startswith("/")
    ok = ok and not any(c in name for c in "\\:\0")
    parts = name.split("/") if ok else []
    if not ok or any(p in ("", ".", "..") for p in parts):
        raise DownloadError(
            f"{source}: refusing file name {name!r}: expected a relative path inside {target} "
            f"(no '..', absolute paths, backslashes or drive letters)"
        )
    path = target.joinpath(*parts)
    # A symlink already inside target could still lead outside it.
    if not path.resolve().is_relative_to(target.resolve()):
        raise DownloadError(f"{source}: {name!r} resolves to {path.resolve()}, outside {target}")
    return path


def _fetch_hf_model(hub: Hub, target: Path, files: dict[str, RemoteFile]) -> None:
    """config + tokenizer files as present + the weights: model.safetensors, or its index and
    every shard; else (older uploads) pytorch_model.bin, or its index and every shard."""
    for name in HF_REQUIRED + HF_OPTIONAL:
        hub.fetch(name, target / name, files, required=name in HF_REQUIRED)
    for index_name, single in HF_WEIGHTS:
        if index_name in files:
            index = target / index_name
            hub.fetch(index_name, index, files, required=True)
            shards = _index_shards(index)
            # Check every shard name before fetching any of them.
            dests = {shard: safe_path(target, shard, str(index)) for shard in shards}
            missing = [shard for shard in shards if shard not in files]
            if missing:
                raise DownloadError(
                    f"{index}: lists shards {missing}, but {hub.page} has no such files"
                )
            for shard, dest in dests.items():
                hub.fetch(shard, dest, files, required=True)
            return
        if single in files:
            hub.fetch(single, target / single, files, required=True)
            return
    looked = ", ".join(name for pair in HF_WEIGHTS for name in pair)
    raise DownloadError(
        f"{hub.page}: no weights at revision {hub.revision!r}: looked for {looked} (found: "
        f"{', '.join(sorted(files)) or 'nothing'})"
    )


def _index_shards(index: Path) -> list[str]:
    """The shard file names a model.safetensors.index.json maps tensors to (each still to be
    checked with safe_path)."""
    weight_map = validate(read_json(index, DownloadError), INDEX, index, DownloadError)
    weight_map = weight_map["weight_map"]
    if not weight_map:
        raise DownloadError(f"{index}: 'weight_map' is empty: it lists no shard")
    return sorted(set(weight_map.values()))


@dataclass
class Hub:
    """One repo at one revision on a hub endpoint."""

    endpoint: str
    repo: str
    revision: str
    token: str | None
    budget: Budget
    quiet: bool

    @property
    def page(self) -> str:
        return f"{self.endpoint}/{self.repo}"

    def url(self, name: str) -> str:
        rev = urllib.parse.quote(self.revision, safe="")
        return f"{self.endpoint}/{self.repo}/resolve/{rev}/{urllib.parse.quote(name)}"

    def list_files(self) -> dict[str, RemoteFile]:
        """{file path: size and sha256} for the repo's files, in subfolders too (some repos
        keep their shards in one, and their index names them "sub/model-...")."""
        rev = urllib.parse.quote(self.revision, safe="")
        url = f"{self.endpoint}/api/models/{self.repo}/tree/{rev}?recursive=true"
        with _open(url, {}, self.token, self.budget, self.page) as resp:
            body = _read_listing(resp, url, self.budget, self.page)
        source = f"{url}: the file listing (is {self.endpoint} a Hugging Face hub?)"
        entries = validate(
            parse_json(body, source, DownloadError, MAX_LISTING), HUB_LISTING, url, DownloadError
        )
        files = {}
        for e in entries:
            if e["type"] != "file":
                continue
            # Large files are stored in LFS: their entry gives the real file's size and sha256.
            size = e["lfs"]["size"] if e["lfs"] else e.get("size")
            if size is None:
                raise DownloadError(f"{url}: file {e['path']!r} is listed without a size")
            sha256 = e["lfs"]["oid"] if e["lfs"] else None
            if not (sha256 and re.fullmatch(r"[0-9a-f]{64}", sha256)):
                sha256 = None
            files[e["path"]] = RemoteFile(size, sha256)
        return files

    def fetch(self, name: str, dest: Path, files: dict[str, RemoteFile], required: bool) -> None:
        """Fetch repo file `name` to `dest` unless it is complete; skip absent optional files."""
        if name not in files:
            if required:
                raise DownloadError(
                    f"{self.page}: no file {name!r} at revision {self.revision!r} "
                    f"(found: {', '.join(sorted(files)) or 'nothing'})"
                )
            return
        size, sha256 = files[name]
        # Complete files were checked before they got their name, so the size is enough here.
        if dest.exists() and dest.stat().st_size == size:
            _say(self.quiet, f"{dest}: already complete ({_size(size)})")
            return
        fetch(
            self.url(name),
            dest,
            size,
            sha256=sha256,
            token=self.token,
            budget=self.budget,
            quiet=self.quiet,
            page=self.page,
        )


def fetch(
    url: str,
    dest: Path,
    size: int | None,
    *,
    sha256: str | None = None,
    token: str | None = None,
    budget: Budget | None = None,
    quiet: bool = False,
    page: str | None = None,
) -> int:
    """Download `url` to `dest` through `dest.part`, resuming an existing `.part`.

    `size` (bytes) and `sha256` (hex) are checked when given. Returns the bytes transferred.
    A dropped connection leaves the `.part` for the next run to resume. `budget` bounds the
    time (default: TIMEOUT per read, MIN_RATE, no deadline).
    """
    budget = budget or Budget(TIMEOUT, None, None, MIN_RATE)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)  # a shard in a subfolder ("sub/...")
    except OSError as e:
        raise DownloadError(f"{dest.parent}: cannot create the directory: {e.strerror}") from None
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:  # not a prefix of this file
        part.unlink()
        have = 0
    if size is not None and have == size and part.exists():
        _finish(part, dest, sha256, url)
        return 0
    resp = _open(url, {"Range": f"bytes={have}-"} if have else {}, token, budget, page)
    if resp is None:  # 416: the .part reaches past the end of this file, so start over
        part.unlink()
        have = 0
        resp = _open(url, {}, token, budget, page)
    with resp:
        start, total = _response_span(resp, url, have)
        if size is not None and total is not None and total != size:
            raise DownloadError(
                f"{url}: size mismatch: the server sends {total} bytes, the hub's listing "
                f"says {size}; the file may have changed, run the command again"
            )
        expected = size if size is not None else total
        done = _stream(resp, part, start, expected, url, quiet, dest.name, budget)
    if expected is not None and done != expected:
        raise DownloadError(
            f"{url}: connection closed after {done} of {expected} bytes; run the same command "
            f"again to resume from {part}"
        )
    _finish(part, dest, sha256, url)
    return done - start


def _finish(part: Path, dest: Path, sha256: str | None, url: str) -> None:
    """Check a complete `.part` against its sha256, then rename it into place atomically.

    The check also catches a resume that joined two versions of a file of the same size.
    """
    if sha256 is not None:
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
        if digest.hexdigest() != sha256:
            part.unlink()
            raise DownloadError(
                f"{url}: checksum mismatch: the download's sha256 is {digest.hexdigest()}, the "
                f"hub's listing says {sha256}; deleted it, run the same command again"
            )
    os.replace(part, dest)


def _response_span(resp, url: str, have: int) -> tuple[int, int | None]:
    """(offset the body starts at, total file size if announced) of a 200 or 206 response."""
    if resp.status == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != have:
            raise DownloadError(
                f"{url}: asked for bytes {have}- but got Content-Range "
                f"{resp.headers.get('Content-Range')!r}; delete the .part file and retry"
            )
        return have, int(m.group(3))
    # 200: the whole file, also when a server ignores Range; the .part restarts from zero.
    length = resp.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _read_listing(resp, url: str, budget: Budget, page: str) -> bytes:
    """The body of a listing, up to MAX_LISTING + 1 bytes, within the download's deadline
    and minimum rate: a server dripping it a byte at a time holds no single read long, so
    only the clock of the whole transfer can stop it."""
    chunks: list[bytes] = []
    n = 0
    start = time.monotonic()
    while n <= MAX_LISTING:
        budget.socket_timeout(url)  # raises once the deadline has passed
        elapsed = time.monotonic() - start
        if elapsed >= RATE_WINDOW and n / elapsed < budget.min_rate:
            raise DownloadError(
                f"{url}: too slow: {n / elapsed:,.0f} bytes/s, below the minimum of "
                f"{budget.min_rate:,.0f}; check the network (and --endpoint / HF_ENDPOINT)"
            )
        try:
            chunk = resp.read1(MAX_LISTING + 1 - n)
        except (OSError, http.client.HTTPException) as e:
            raise _network_error(url, e, page) from None
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
    return b"".join(chunks)


def _stream(
    resp,
    part: Path,
    start: int,
    expected: int | None,
    url: str,
    quiet: bool,
    label: str,
    budget: Budget,
) -> int:
    """Append the response body to `part` from offset `start`; return the size reached."""
    limit = expected if expected is not None else MAX_UNSIZED
    progress = _Progress(label, expected, start, enabled=not quiet and sys.stderr.isatty())
    done = start
    window_start, window_done = time.monotonic(), start  # for the minimum rate
    with open(part, "r+b" if start else "wb") as f:
        f.seek(start)
        f.truncate()
        while done <= limit:  # each read returns >= 1 byte or ends; `limit` bounds the total
            now = time.monotonic()
            if now - window_start >= RATE_WINDOW:
                rate = (done - window_done) / (now - window_start)
                if rate < budget.min_rate:
                    progress.close()
                    raise DownloadError(
                        f"{url}: too slow: {rate:,.0f} bytes/s over the last {RATE_WINDOW:g} s, "
                        f"below the minimum of {budget.min_rate:,.0f}; abandoned after {done} "
                        f"bytes, run the same command again to resume from {part}"
                    )
                window_start, window_done = now, done
            try:
                budget.socket_timeout(url)  # raises once the deadline has passed
            except DownloadError:
                progress.close()
                raise
            try:
                # read1: what has arrived (up to CHUNK), so a trickle cannot hold one read
                # open for ever; plain read(CHUNK) would wait for all CHUNK bytes.
                chunk = resp.read1(CHUNK)
            except (OSError, http.client.HTTPException) as e:
                progress.close()
                raise DownloadError(
                    f"{url}: connection lost after {done} bytes ({e}); run the same command "
                    f"again to resume from {part}"
                ) from None
            if not chunk:
                break
            if done + len(chunk) > limit:
                progress.close()
                raise DownloadError(
                    f"{url}: size mismatch: the server sent more than the expected {limit} bytes"
                )
            f.write(chunk)
            done += len(chunk)
            progress.update(done)
    progress.close()
    if expected in (None, done):
        secs = max(time.monotonic() - progress.t0, 1e-9)
        resumed = f", resumed at {_size(start)}" if start else ""
        _say(
            quiet,
            f"{part.parent / label}: fetched {_size(done)}{resumed} in {secs:.1f} s "
            f"({(done - start) / secs / 1e6:.1f} MB/s)",
        )
    return done


class _Progress:
    """One self-overwriting stderr line: bytes, percent and speed (only on a terminal)."""

    def __init__(self, label: str, total: int | None, start: int, enabled: bool):
        self.label, self.total, self.start, self.enabled = label, total, start, enabled
        self.t0 = self.shown = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.shown < 0.2:
            return
        self.shown = now
        rate = (done - self.start) / max(now - self.t0, 1e-9) / 1e6
        pct = f"{100 * done / self.total:5.1f}%" if self.total else "     "
        total = f"/{_size(self.total)}" if self.total else ""
        sys.stderr.write(f"\r{self.label}  {_size(done)}{total}  {pct}  {rate:6.1f} MB/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.shown > self.t0:
            sys.stderr.write("\n")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} bytes"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"llama-np: {text}", file=sys.stderr)


class _RedirectKeepingAuthOnSameHost(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but send the token only to the host it was given for: the hub sends
    large files on to a CDN with a signed URL, which must neither see nor need the token."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and _origin(newurl) == _origin(req.full_url):
            new.add_unredirected_header("Authorization", auth)
        return new


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc


# Thread id -> the socket of the request that thread is opening (set as each connection
# connects, so also after a redirect), for the watchdog of _open.
_CONNECTING: dict[int, socket.socket] = {}


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _CONNECTING[threading.get_ident()] = self.sock


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _CONNECTING[threading.get_ident()] = self.sock


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_WatchedHTTPConnection, req, **kwargs)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_WatchedHTTPSConnection, req, **kwargs)


_OPENER = urllib.request.build_opener(
    _RedirectKeepingAuthOnSameHost, _WatchedHTTPHandler, _WatchedHTTPSHandler
)


def _shut_down(thread: int) -> None:
    """The watchdog: end the request `thread` is opening (its blocked read returns at once)."""
    sock = _CONNECTING.get(thread)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _open(url: str, headers: dict[str, str], token: str | None, budget: Budget, page: str | None):
    """GET `url`, following redirects. None when a Range request is refused (HTTP 416);
    any other failure is a DownloadError."""
    req = urllib.request.Request(url, headers={"User-Agent": "llama_np", **headers})
    if token:
        # Unredirected: urllib would otherwise copy it to every redirect target.
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    # Each read may stall `timeout` seconds, but a server dripping its status line and headers
    # a byte at a time stalls none: with a deadline, a watchdog shuts the socket down then.
    timeout = budget.socket_timeout(url)
    watchdog = None
    if budget.deadline is not None:
        left = max(budget.deadline - time.monotonic(), 0.0)
        watchdog = threading.Timer(left, _shut_down, (threading.get_ident(),))
        watchdog.daemon = True
        watchdog.start()
    try:
        return _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and "Range" in headers:
            return None
        raise _network_error(url, e, page) from None
    except (OSError, http.client.HTTPException) as e:
        budget.socket_timeout(url)  # the deadline passed (the watchdog's doing): say that
        raise _network_error(url, e, page) from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
        _CONNECTING.pop(threading.get_ident(), None)


def _network_error(url: str, e: Exception, page: str | None = None) -> DownloadError:
    """One clear error for a failed request: the URL, the HTTP status, and the fix."""
    if not isinstance(e, urllib.error.HTTPError):
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        return DownloadError(
            f"{url}: request failed: {reason}; check the network (and --endpoint / HF_ENDPOINT), "
            f"then run the same command again (finished files are kept, partial ones resume)"
        )
    page = page or url
    status = f"HTTP {e.code} {e.reason}"
    if e.code == 401:
        fix = (
            "the repo does not exist, or it is gated or private: check the name; for a gated "
            f"model create a token at https://huggingface.co/settings/tokens, set HF_TOKEN to "
            f"it, and accept the license on {page}"
        )
    elif e.code == 403:
        fix = (
            f"your HF_TOKEN has no access to this model: accept its license on {page} (with the "
            "account the token belongs to) and wait for the request to be granted"
        )
    elif e.code == 404:
        fix = "check the repo id, the --revision and the file name"
    elif e.code == 429:
        fix = "rate limited by the server: wait a few minutes, then run the same command again"
    elif e.code >= 500:
        fix = "the server failed: run the same command again later (partial files resume)"
    else:
        fix = "unexpected answer from the server"
    return DownloadError(f"{url}: {status}: {fix}")
