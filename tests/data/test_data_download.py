"""download_pararel against a local HTTP server laid out like GitHub raw (no internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from knowloc.data import PINNED_COMMIT, download_pararel, load_facts
from knowloc.data.download import SOURCE_DIRS, load_manifest
from knowloc.errors import KnowlocError


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output clean
        pass


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(root, base_url): files put under root/<commit>/<repo path> are served at base_url/..."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/yanaiela/pararel"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def repo_path(root: Path, name: str, commit: str = PINNED_COMMIT) -> Path:
    sub, filename = name.split("/", 1)
    return root / "yanaiela" / "pararel" / commit / SOURCE_DIRS[sub] / filename


def publish(root: Path, source: Path, names: list[str]) -> None:
    """Lay out local ParaRel files as GitHub raw serves them."""
    for name in names:
        target = repo_path(root, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)


def all_files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_manifest_matches_local_copy(pararel_dir: Path) -> None:
    files = load_manifest()["files"]
    local = {f"{sub}/{p.name}" for sub in ("patterns", "facts") for p in (pararel_dir / sub).glob("*.jsonl")}
    assert set(files) == local
    for name, sha in files.items():
        assert hashlib.sha256((pararel_dir / name).read_bytes()).hexdigest() == sha, name


def test_download_all(served: tuple[Path, str], pararel_dir: Path, tmp_path: Path) -> None:
    root, base_url = served
    names = list(load_manifest()["files"])
    publish(root, pararel_dir, names)
    dest = download_pararel(tmp_path / "pararel", base_url=base_url)
    assert dest == (tmp_path / "pararel").resolve()
    assert all_files(dest) == sorted(["facts", "patterns", *names])
    for name in names:
        assert (dest / name).read_bytes() == (pararel_dir / name).read_bytes()
    downloaded = load_facts(f"pararel:{dest}", relations=["P36", "P103"], limit=5)
    assert downloaded.items == load_facts(f"pararel:{pararel_dir}", relations=["P36", "P103"], limit=5).items

    # files already present and verified are not fetched again: works with the server emptied
    shutil.rmtree(root / "yanaiela")
    assert download_pararel(dest, base_url=base_url) == dest
    assert all_files(dest) == sorted(["facts", "patterns", *names])


def test_download_some_relations(served: tuple[Path, str], pararel_dir: Path, tmp_path: Path) -> None:
    root, base_url = served
    names = ["patterns/P36.jsonl", "facts/P36.jsonl", "patterns/P30.jsonl", "facts/P30.jsonl"]
    publish(root, pararel_dir, names)
    dest = download_pararel(tmp_path / "out", base_url=base_url + "/", relations=["P36", "P30"])
    assert all_files(dest) == sorted(["facts", "patterns", *names])
    assert load_facts(f"pararel:{dest}").relations == ["P30", "P36"]


def test_tampered_file_gives_checksum_error_and_writes_nothing(
    served: tuple[Path, str], pararel_dir: Path, tmp_path: Path
) -> None:
    root, base_url = served
    publish(root, pararel_dir, ["patterns/P36.jsonl", "facts/P36.jsonl"])  # patterns are fetched first
    tampered = repo_path(root, "facts/P36.jsonl")
    tampered.write_bytes(tampered.read_bytes().replace(b"Chicago", b"Chicagx", 1))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(KnowlocError, match=r"checksum mismatch for .*/data/trex_lms_vocab/P36\.jsonl") as info:
        download_pararel(dest, base_url=base_url, relations=["P36"])
    assert "\n" not in str(info.value)
    assert all_files(dest) == ["keep.txt"]  # not even the verified patterns file, no staging leftovers


def test_tampered_without_local_data(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base_url = served
    for name in ("patterns/P36.jsonl", "facts/P36.jsonl"):
        target = repo_path(root, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text('{"pattern": "The capital of [X] is [Y] ."}\n')
    dest = tmp_path / "new" / "dest"
    with pytest.raises(KnowlocError, match="checksum mismatch"):
        download_pararel(dest, base_url=base_url, relations=["P36"])
    assert not dest.exists()  # created by the call, removed again


def test_missing_file_on_server(served: tuple[Path, str], tmp_path: Path) -> None:
    _, base_url = served
    with pytest.raises(KnowlocError, match=r"download failed: .*P36\.jsonl: HTTP 404"):
        download_pararel(tmp_path / "d", base_url=base_url, relations=["P36"])
    assert not (tmp_path / "d").exists()


def test_unreachable_server(tmp_path: Path) -> None:
    with pytest.raises(KnowlocError, match="download failed"):
        download_pararel(tmp_path / "d", base_url="http://127.0.0.1:9", relations=["P36"], timeout=5)


def test_unknown_relation(tmp_path: Path) -> None:
    with pytest.raises(KnowlocError, match=r"unknown ParaRel relation 'P31'; available: .*P36"):
        download_pararel(tmp_path / "d", relations=["P31"])  # P31 has facts but no patterns
    assert not (tmp_path / "d").exists()
    with pytest.raises(KnowlocError, match="empty relation list"):
        download_pararel(tmp_path / "d", relations=[])


def test_other_commit_needs_verify_false(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base_url = served
    with pytest.raises(KnowlocError, match="no checksums for ParaRel commit 'abc'"):
        download_pararel(tmp_path / "d", base_url=base_url, commit="abc")
    for name in ("patterns/P36.jsonl", "facts/P36.jsonl"):
        target = repo_path(root, name, commit="abc")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{}\n")
    dest = download_pararel(tmp_path / "d", base_url=base_url, commit="abc", relations=["P36"], verify=False)
    assert (dest / "facts" / "P36.jsonl").read_text() == "{}\n"


def test_destination_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(KnowlocError, match="not a directory"):
        download_pararel(path, relations=["P36"])
