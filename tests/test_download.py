"""The checkpoint downloader against a fake Hugging Face hub on 127.0.0.1 (no internet).

The fake hub serves a small repo: the file listing at /api/models/{repo}/tree/{rev} and the
files at /{repo}/resolve/{rev}/{file}, with Range support. It can be told to drop the
connection after N bytes of a file, to ignore Range, to misreport a size in its listing, to
require a token, and to redirect file requests to a second server (a "CDN" on another port).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

import llama_np
from llama_np.checkpoints import download as dl
from llama_np.checkpoints.download import KNOWN_CHECKPOINTS, KnownCheckpoint, download, safe_path
from llama_np.checkpoints.safetensors import read_safetensors_dir
from llama_np.cli import main
from llama_np.errors import DownloadError

REPO = "org/tiny"
SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"
WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "stories260K"


class FakeHub:
    """What the fake server serves and how it misbehaves; `log` records every request."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.listed_sizes: dict[str, int] = {}  # listing size overrides
        self.listed_sha256: dict[str, str] = {}  # listing sha256 overrides
        self.drop_after: dict[str, int] = {}  # file -> bytes sent before closing (once)
        self.ignore_range = False
        self.token: str | None = None  # required bearer token on hub URLs
        self.redirect_to: str | None = None  # base URL files are redirected to
        self.log: list[dict] = []
        self.url = ""

    def listing_entry(self, name: str) -> dict:
        """Like the hub's: weights are LFS files, listed with their size and sha256."""
        size = self.listed_sizes.get(name, len(self.files[name]))
        entry = {"type": "file", "path": name, "size": size}
        if name.endswith(".safetensors"):
            sha256 = hashlib.sha256(self.files[name]).hexdigest()
            entry["lfs"] = {"oid": self.listed_sha256.get(name, sha256), "size": size}
            entry["size"] = 134  # the size of the LFS pointer in git, not of the file
        return entry

    def requests_for(self, name: str) -> list[dict]:
        return [r for r in self.log if r["path"].endswith("/" + name)]


def make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # a stalled client cannot hold a server thread forever

        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            entry = {
                "path": self.path,
                "range": self.headers.get("Range"),
                "auth": self.headers.get("Authorization"),
                "status": None,
                "sent": 0,
            }
            hub.log.append(entry)
            api = f"/api/models/{REPO}/tree/main"
            resolve = f"/{REPO}/resolve/main/"
            path, _, query = self.path.partition("?")
            if path in (api, *(resolve + n for n in hub.files)):
                if hub.token and entry["auth"] != f"Bearer {hub.token}":
                    return self.reply(entry, 401, b"unauthorized")
            if path == api:  # as the hub: files in subfolders only when recursive
                recursive = query == "recursive=true"
                names = [n for n in hub.files if recursive or "/" not in n]
                listing = [hub.listing_entry(name) for name in names]
                folders = {"original", *(n.split("/")[0] for n in hub.files if "/" in n)}
                listing += [{"type": "directory", "path": f, "size": 0} for f in sorted(folders)]
                return self.reply(entry, 200, json.dumps(listing).encode())
            if self.path.startswith(resolve) and hub.redirect_to:
                name = self.path[len(resolve) :]
                headers = {"Location": f"{hub.redirect_to}/cdn/{name}"}
                return self.reply(entry, 302, b"", headers)
            for prefix in (resolve, "/cdn/"):
                name = self.path[len(prefix) :]
                if self.path.startswith(prefix) and name in hub.files:
                    return self.serve(entry, name)
            return self.reply(entry, 404, b"not found")

        def serve(self, entry, name):
            data = hub.files[name]
            m = re.fullmatch(r"bytes=(\d+)-", entry["range"] or "")
            if m and not hub.ignore_range:
                start = int(m.group(1))
                if start >= len(data):
                    return self.reply(entry, 416, b"")
                headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                return self.reply(entry, 206, data[start:], headers, hub.drop_after.pop(name, None))
            return self.reply(entry, 200, data, {}, hub.drop_after.pop(name, None))

        def reply(self, entry, status, body, headers=None, drop_after=None):
            sent = body if drop_after is None else body[:drop_after]
            # Logged before sending: the client may check the log as soon as it has the body.
            entry["status"], entry["sent"] = status, len(sent)
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(sent)
                self.wfile.flush()
            except ConnectionError:  # the client stopped reading, e.g. after a size error
                pass
            self.close_connection = True  # with drop_after: the client sees a short body

    return Handler


def start_server(hub: FakeHub):
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(hub))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return server, thread


@pytest.fixture
def repo_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    shard1 = save({"model.embed_tokens.weight": rng.standard_normal((64, 32), dtype=np.float32)})
    shard2 = save({"lm_head.weight": rng.standard_normal((1024, 64), dtype=np.float32)})
    index = {
        "metadata": {"total_size": len(shard1) + len(shard2)},
        "weight_map": {"model.embed_tokens.weight": SHARD1, "lm_head.weight": SHARD2},
    }
    return {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"]}).encode(),
        "tokenizer.json": json.dumps({"model": {"type": "BPE"}}).encode(),
        "tokenizer_config.json": b'{"bos_token": "<s>"}',
        "model.safetensors.index.json": json.dumps(index).encode(),
        SHARD1: shard1,
        SHARD2: shard2,
        "README.md": b"not part of a checkpoint: never fetched",
    }


@pytest.fixture
def hub(repo_files, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    fake = FakeHub(repo_files)
    server, thread = start_server(fake)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def cdn(hub):
    """A second server on another port serving the same files: redirect target."""
    server, thread = start_server(hub)
    hub.redirect_to = f"http://127.0.0.1:{server.server_address[1]}"
    yield hub.redirect_to
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def fetch_repo(hub: FakeHub, tmp_path: Path, **kw) -> Path:
    return download(REPO, tmp_path / "weights", endpoint=hub.url, quiet=True, timeout=5, **kw)


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


CHECKPOINT_FILES = {
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors.index.json",
    SHARD1,
    SHARD2,
}


def test_sharded_repo_downloads_byte_identical_and_rerun_skips(hub, repo_files, tmp_path):
    target = fetch_repo(hub, tmp_path)
    assert target == tmp_path / "weights" / "tiny"
    assert files_under(target) == CHECKPOINT_FILES  # no README, no .part left behind
    for name in CHECKPOINT_FILES:
        assert (target / name).read_bytes() == repo_files[name], name

    hub.log.clear()
    fetch_repo(hub, tmp_path)
    assert [r["path"] for r in hub.log] == [f"/api/models/{REPO}/tree/main?recursive=true"]


def test_shards_in_a_subfolder_are_downloaded_and_load(hub, repo_files, tmp_path):
    """Some repos keep their shards in a folder and name them so in the index, which
    transformers reads: the folder is made, and the checkpoint loads."""
    index = json.loads(repo_files["model.safetensors.index.json"])
    index["weight_map"] = {name: f"weights/{shard}" for name, shard in index["weight_map"].items()}
    hub.files["model.safetensors.index.json"] = json.dumps(index).encode()
    for shard in (SHARD1, SHARD2):
        hub.files[f"weights/{shard}"] = hub.files.pop(shard)
    target = fetch_repo(hub, tmp_path)
    for shard in (SHARD1, SHARD2):
        assert (target / "weights" / shard).read_bytes() == repo_files[shard]
    tensors = read_safetensors_dir(target)
    assert tensors["lm_head.weight"].shape == (1024, 64)


def test_single_file_model_without_optional_files(hub, repo_files, tmp_path):
    for name in ("model.safetensors.index.json", SHARD1, SHARD2, "tokenizer_config.json"):
        del hub.files[name]
    hub.files["model.safetensors"] = repo_files[SHARD2]
    target = fetch_repo(hub, tmp_path)
    assert files_under(target) == {"config.json", "tokenizer.json", "model.safetensors"}
    assert (target / "model.safetensors").read_bytes() == repo_files[SHARD2]


def test_pytorch_only_repo_downloads_its_bin_files(hub, repo_files, tmp_path):
    """Older uploads (Vicuna, OpenLLaMA) hold pytorch_model.bin, or its shards and index,
    which llama_np reads (checkpoints/hf.py); safetensors win where a repo has both."""
    for name in ("model.safetensors.index.json", SHARD1, SHARD2):
        del hub.files[name]
    index = {"weight_map": {"a": "pytorch_model-00001-of-00002.bin",
                            "b": "pytorch_model-00002-of-00002.bin"}}  # fmt: skip
    hub.files["pytorch_model.bin.index.json"] = json.dumps(index).encode()
    for i, shard in enumerate(sorted(set(index["weight_map"].values()))):
        hub.files[shard] = bytes([i]) * 100
    target = fetch_repo(hub, tmp_path)
    assert {"pytorch_model.bin.index.json", *index["weight_map"].values()} <= files_under(target)
    del hub.files["pytorch_model.bin.index.json"]
    hub.files["pytorch_model.bin"] = b"x" * 10
    target = fetch_repo(hub, tmp_path / "single")
    assert (target / "pytorch_model.bin").read_bytes() == b"x" * 10


def test_interrupted_download_resumes_from_part_file(hub, repo_files, tmp_path):
    size = len(repo_files[SHARD2])
    hub.drop_after[SHARD2] = 5000
    with pytest.raises(DownloadError, match=r"after 5000 of .* bytes.*again to resume"):
        fetch_repo(hub, tmp_path)
    target = tmp_path / "weights" / "tiny"
    assert not (target / SHARD2).exists()
    assert (target / (SHARD2 + ".part")).stat().st_size == 5000

    hub.log.clear()
    fetch_repo(hub, tmp_path)
    (resumed,) = hub.requests_for(SHARD2)
    assert resumed["range"] == "bytes=5000-"
    assert resumed["status"] == 206
    assert resumed["sent"] == size - 5000
    assert (target / SHARD2).read_bytes() == repo_files[SHARD2]
    assert not (target / (SHARD2 + ".part")).exists()


def test_server_ignoring_range_still_gives_the_right_file(hub, repo_files, tmp_path):
    hub.drop_after[SHARD1] = 3000
    with pytest.raises(DownloadError):
        fetch_repo(hub, tmp_path)
    hub.ignore_range = True
    hub.log.clear()
    target = fetch_repo(hub, tmp_path)
    (retry,) = hub.requests_for(SHARD1)
    assert retry["range"] == "bytes=3000-" and retry["status"] == 200
    assert retry["sent"] == len(repo_files[SHARD1])
    assert (target / SHARD1).read_bytes() == repo_files[SHARD1]


def test_part_file_longer_than_the_file_restarts(hub, repo_files, tmp_path):
    target = tmp_path / "weights" / "tiny"
    target.mkdir(parents=True)
    (target / "config.json.part").write_bytes(b"x" * 10_000)  # longer than config.json
    fetch_repo(hub, tmp_path)
    assert (target / "config.json").read_bytes() == repo_files["config.json"]


@pytest.mark.parametrize("delta", [7, -7])
def test_size_mismatch_is_an_error(hub, repo_files, tmp_path, delta):
    hub.listed_sizes[SHARD1] = len(repo_files[SHARD1]) + delta
    with pytest.raises(DownloadError, match="size mismatch") as e:
        fetch_repo(hub, tmp_path)
    assert SHARD1 in str(e.value)
    assert not (tmp_path / "weights" / "tiny" / SHARD1).exists()


def test_checksum_mismatch_deletes_the_download(hub, repo_files, tmp_path):
    hub.listed_sha256[SHARD2] = "0" * 64
    with pytest.raises(DownloadError, match="checksum mismatch") as e:
        fetch_repo(hub, tmp_path)
    assert SHARD2 in str(e.value)
    target = tmp_path / "weights" / "tiny"
    assert not (target / SHARD2).exists() and not (target / (SHARD2 + ".part")).exists()
    del hub.listed_sha256[SHARD2]
    fetch_repo(hub, tmp_path)
    assert (target / SHARD2).read_bytes() == repo_files[SHARD2]


@pytest.mark.parametrize(
    "evil", ["../evil.safetensors", "/etc/x", "sub/../../evil", "..\\evil", "C:evil", ""]
)
def test_unsafe_shard_name_in_index_is_refused(hub, tmp_path, evil):
    index = {"weight_map": {"a": SHARD1, "b": evil}}
    hub.files["model.safetensors.index.json"] = json.dumps(index).encode()
    hub.files[evil] = b"malicious"
    (tmp_path / "weights").mkdir()
    with pytest.raises(DownloadError, match="refusing file name"):
        fetch_repo(hub, tmp_path)
    # Nothing outside the target, and no shard was fetched before the check.
    assert {p.name for p in tmp_path.iterdir()} == {"weights"}
    assert {p.name for p in (tmp_path / "weights").iterdir()} == {"tiny"}
    assert not hub.requests_for(SHARD1)
    assert not any("evil" in r["path"] for r in hub.log)


@pytest.mark.parametrize(
    "name", ["..", "../x", "a/../../x", "/abs", "a\\b", "C:x", "D:/x", "a//b", "./a", "a\0b", 3]
)
def test_safe_path_refuses_names_that_leave_the_target(tmp_path, name):
    with pytest.raises(DownloadError, match="refusing"):
        safe_path(tmp_path, name, "test")


def test_safe_path_refuses_symlink_out_of_the_target(tmp_path):
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (target / "link").symlink_to(outside)
    assert safe_path(target, "sub/model.safetensors", "test") == target / "sub/model.safetensors"
    with pytest.raises(DownloadError, match="outside"):
        safe_path(target, "link/x", "test")


def test_unauthorized_names_the_url_status_and_hf_token(hub, tmp_path):
    hub.token = "secret"
    with pytest.raises(DownloadError) as e:
        fetch_repo(hub, tmp_path)
    message = str(e.value)
    assert f"{hub.url}/api/models/{REPO}/tree/main" in message
    assert "HTTP 401" in message
    assert "HF_TOKEN" in message and "license" in message
    assert not (tmp_path / "weights").exists()


def test_token_is_sent_to_the_hub_but_not_to_the_redirect_target(hub, cdn, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "secret")
    hub.token = "secret"
    fetch_repo(hub, tmp_path)
    hub_requests = [r for r in hub.log if not r["path"].startswith("/cdn/")]
    cdn_requests = [r for r in hub.log if r["path"].startswith("/cdn/")]
    assert len(cdn_requests) == len(CHECKPOINT_FILES)
    assert all(r["auth"] == "Bearer secret" for r in hub_requests)
    assert all(r["auth"] is None for r in cdn_requests)


def test_resume_through_a_redirect_keeps_the_range(hub, cdn, repo_files, tmp_path):
    hub.drop_after[SHARD2] = 4096
    with pytest.raises(DownloadError):
        fetch_repo(hub, tmp_path)
    hub.log.clear()
    target = fetch_repo(hub, tmp_path)
    cdn_request = [r for r in hub.requests_for(SHARD2) if r["path"].startswith("/cdn/")]
    assert [r["range"] for r in cdn_request] == ["bytes=4096-"]
    assert (target / SHARD2).read_bytes() == repo_files[SHARD2]


def test_missing_repo_and_missing_shard_are_clear_errors(hub, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*check the repo id"):
        download("org/other", tmp_path, endpoint=hub.url, quiet=True, timeout=5)
    del hub.files[SHARD2]
    with pytest.raises(DownloadError, match=f"lists shards \\['{SHARD2}'\\]"):
        fetch_repo(hub, tmp_path)


def test_connection_refused_is_one_clear_error(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}.*request failed"):
        download(REPO, tmp_path, endpoint=f"http://127.0.0.1:{port}", quiet=True, timeout=5)


def test_registry_names(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert dl.resolve_name("STORIES15m") == ("stories15M", KNOWN_CHECKPOINTS["stories15M"])
    assert KNOWN_CHECKPOINTS["stories110M"].files == ("stories110M.bin",)
    # Refused before any request (the endpoint keeps a regression off the internet).
    with pytest.raises(DownloadError, match=r"is gated.*HF_TOKEN"):
        download("llama-3.2-1b-instruct", tmp_path, endpoint="http://127.0.0.1:9")
    assert dl.resolve_name("a/b-1.0")[0] == "b-1.0"
    for bad in ("nonsense", "../x", "a/..", "a/b/c", "/a/b"):
        with pytest.raises(DownloadError, match="not a known checkpoint"):
            download(bad, tmp_path, endpoint="http://127.0.0.1:9")


def test_llama2c_registry_entry_fetches_a_loadable_checkpoint(hub, monkeypatch, tmp_path):
    """A registry entry in the llama2.c layout (weights from the repo, tokenizer from a URL),
    here pointed at the fake hub and filled with the bundled stories260K."""
    hub.files = {"stories260K.bin": (WEIGHTS / "stories260K.bin").read_bytes()}
    hub.files["tok512.bin"] = (WEIGHTS / "tok512.bin").read_bytes()
    entry = KnownCheckpoint(
        REPO, files=("stories260K.bin",), urls=(("tok512.bin", f"{hub.url}/cdn/tok512.bin"),)
    )
    monkeypatch.setitem(KNOWN_CHECKPOINTS, "tiny-stories", entry)
    target = download("tiny-stories", tmp_path, endpoint=hub.url, quiet=True, timeout=5)
    assert files_under(target) == {"stories260K.bin", "tok512.bin"}
    model = llama_np.load(target)
    assert model.config.vocab_size == 512 and model.tokenizer is not None


def test_cli_download_and_error(hub, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    assert main(["download", REPO, "--dir", str(tmp_path), "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "tiny")
    assert err == ""
    assert files_under(tmp_path / "tiny") == CHECKPOINT_FILES

    shutil.rmtree(tmp_path / "tiny")
    assert main(["download", "org/missing", "--dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("llama-np: error: ") and "HTTP 404" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_token_is_kept_on_a_same_host_redirect(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "secret")
    hub.redirect_to = hub.url  # e.g. the hub redirecting a renamed repo to its new name
    fetch_repo(hub, tmp_path)
    cdn_requests = [r for r in hub.log if r["path"].startswith("/cdn/")]
    assert cdn_requests and all(r["auth"] == "Bearer secret" for r in cdn_requests)
