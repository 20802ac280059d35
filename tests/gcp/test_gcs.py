"""gs:// checkpoint buckets against the fake GCS JSON API: the node side (GcsBucket, stdlib
urllib) and the controller's submit-time check (google-cloud-storage)."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skyjobs.exceptions import ProviderError, SpecError
from skyjobs.node import gcs as node_gcs
from skyjobs.node.buckets import make_bucket
from skyjobs.node.gcs import (
    GcsBucket,
    GcsBucketError,
    md5_of,
    quote_name,
    range_end,
    relative_name,
    rfc3339_ns,
)
from tests.gcp.gcs_fake import FakeGcs

PROBE = ".skyjobs-probe"


@pytest.fixture
def fake() -> Iterator[FakeGcs]:
    with FakeGcs() as gcs:
        gcs.create_bucket("ckpt")
        yield gcs


@pytest.fixture
def node_env(fake: FakeGcs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeGcs:
    """The node client pointed at the fake, with no metadata server, and quick retries."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.url)
    monkeypatch.setenv("SKYJOBS_METADATA_URL", _refused_url())
    monkeypatch.setattr(node_gcs, "RETRY_BASE", 0.01)
    monkeypatch.setattr(node_gcs, "RETRY_MAX", 0.02)
    return fake


def _refused_url() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now: connections are refused at once
    return f"http://127.0.0.1:{port}"


def copy_bucket(path: Path, source: str = "gs://ckpt/run") -> GcsBucket:
    bucket = make_bucket({"target": str(path), "source": source, "mode": "COPY"}, None)
    assert isinstance(bucket, GcsBucket)
    return bucket


# --- node: COPY ----------------------------------------------------------------------------


def test_copy_mode_downloads_then_uploads_only_what_changed(node_env: FakeGcs,
                                                            tmp_path: Path) -> None:
    fake = node_env
    fake.put("ckpt", "run/old/state.json", b'{"step": 5}')
    fake.put("ckpt", "elsewhere.txt", b"not under the prefix")
    fake.put("ckpt", "run-other/x", b"a sibling prefix, not ours")
    fake.put("ckpt", f"run/{PROBE}-abc", b"probe")
    node = copy_bucket(tmp_path / "a")
    node.prepare()
    assert (tmp_path / "a" / "old" / "state.json").read_bytes() == b'{"step": 5}'
    assert sorted(p.name for p in (tmp_path / "a").rglob("*")) == ["old", "state.json"]
    assert node.upload() == 0  # what was just downloaded is not sent back
    assert fake.authorization and not any(fake.authorization)  # emulator, no metadata: no token

    (tmp_path / "a" / "new.bin").write_bytes(b"x" * 10)
    (tmp_path / "a" / "old" / "state.json").write_bytes(b'{"step": 10}')
    (tmp_path / "a" / ".partial.skyjobs-tmp").write_bytes(b"half")
    assert node.upload() == 2
    assert node.upload() == 0
    assert fake.objects("ckpt") == {
        "elsewhere.txt": b"not under the prefix", "run-other/x": b"a sibling prefix, not ours",
        f"run/{PROBE}-abc": b"probe", "run/new.bin": b"x" * 10,
        "run/old/state.json": b'{"step": 10}'}

    # Downloading again (the agent's refresh before run) fetches nothing this node has.
    downloads = fake.calls["download"]
    node.prepare()
    assert fake.calls["download"] == downloads

    # The next attempt, on another node, starts from what the last one uploaded.
    other = copy_bucket(tmp_path / "b")
    other.prepare()
    assert (tmp_path / "b" / "old" / "state.json").read_bytes() == b'{"step": 10}'
    assert (tmp_path / "b" / "new.bin").read_bytes() == b"x" * 10

    # ...and a checkpoint the old node writes late (its notice upload) reaches the new one
    # on its refresh, without re-fetching what did not change.
    (tmp_path / "a" / "old" / "state.json").write_bytes(b'{"step": 11}')
    assert node.upload() == 1
    downloads = fake.calls["download"]
    other.prepare()
    assert (tmp_path / "b" / "old" / "state.json").read_bytes() == b'{"step": 11}'
    assert fake.calls["download"] == downloads + 1


def test_a_restarted_agent_keeps_files_it_already_has(node_env: FakeGcs,
                                                      tmp_path: Path) -> None:
    node_env.put("ckpt", "run/model.pt", b"weights")
    copy_bucket(tmp_path / "a").prepare()
    downloads = node_env.calls["download"]
    again = copy_bucket(tmp_path / "a")  # a new agent process: no memory of the first
    again.prepare()
    assert node_env.calls["download"] == downloads  # same size and time as the object
    assert again.upload() == 0


def test_a_refresh_keeps_local_changes_the_bucket_has_not_overtaken(node_env: FakeGcs,
                                                                      tmp_path: Path) -> None:
    node_env.put("ckpt", "run/state", b"1")
    node = copy_bucket(tmp_path / "a")
    node.prepare()
    (tmp_path / "a" / "state").write_bytes(b"2")  # written after the last sync
    node.prepare()  # the bucket still holds the version this node had: keep the newer file
    assert (tmp_path / "a" / "state").read_bytes() == b"2"
    assert node.upload() == 1
    node_env.put("ckpt", "run/state", b"3")  # another node wins the race: its file comes in
    node.prepare()
    assert (tmp_path / "a" / "state").read_bytes() == b"3"
    assert node.upload() == 0


def test_nested_paths_and_names_that_need_quoting(node_env: FakeGcs, tmp_path: Path) -> None:
    names = ["deep/er/still/x y.txt", "ü/ñame+plus%percent.bin", "q?uestion#hash&amp=1",
             "semi;colon/@at:colon", "tab\there", "emoji-🙂"]
    src = tmp_path / "a"
    for i, name in enumerate(names):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(f"content {i}".encode())
    node = copy_bucket(src, "gs://ckpt/some run/with space")
    node.prepare()
    assert node.upload() == len(names)
    assert set(node_env.objects("ckpt")) == {f"some run/with space/{n}" for n in names}
    other = copy_bucket(tmp_path / "b", "gs://ckpt/some run/with space")
    other.prepare()
    for i, name in enumerate(names):
        assert (tmp_path / "b" / name).read_bytes() == f"content {i}".encode()


def test_whole_bucket_without_a_prefix(node_env: FakeGcs, tmp_path: Path) -> None:
    node_env.put("ckpt", "a/b", b"1")
    node_env.put("ckpt", "dir/", b"")  # a folder placeholder: not a file
    node = copy_bucket(tmp_path / "a", "gs://ckpt")
    node.prepare()
    assert (tmp_path / "a" / "a" / "b").read_bytes() == b"1"
    assert not (tmp_path / "a" / "dir").exists()


def test_listing_is_paged(node_env: FakeGcs, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(25):
        node_env.put("ckpt", f"run/f{i:02d}", bytes([i]))
    monkeypatch.setattr(node_gcs, "LIST_PAGE_SIZE", 10)
    copy_bucket(tmp_path / "a").prepare()
    assert len(list((tmp_path / "a").iterdir())) == 25
    assert node_env.calls["list"] == 3


def test_large_files_go_up_resumably_and_survive_a_failed_chunk(
        node_env: FakeGcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_gcs, "RESUMABLE_THRESHOLD", 300 * 1024)
    monkeypatch.setattr(node_gcs, "CHUNK_SIZE", 256 * 1024)
    data = os.urandom(700 * 1024)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "big.pt").write_bytes(data)
    node = copy_bucket(tmp_path / "a")
    node_env.fail(503, times=1, op="upload_chunk")  # the session survives; we ask and resume
    assert node.upload() == 1
    assert node_env.objects("ckpt") == {"run/big.pt": data}
    assert any("uploadType=resumable" in p for _, p in node_env.requests)
    assert node_env.calls["upload_chunk"] >= 4  # 3 chunks, one failed, one status query


def test_server_errors_are_retried_then_succeed(node_env: FakeGcs, tmp_path: Path) -> None:
    node_env.put("ckpt", "run/state", b"s")
    node_env.fail(503, times=2, op="list")
    node_env.fail(500, times=1, op="download")
    node_env.fail(429, times=1, op="upload")
    node = copy_bucket(tmp_path / "a")
    node.prepare()
    assert (tmp_path / "a" / "state").read_bytes() == b"s"
    (tmp_path / "a" / "state").write_bytes(b"t")
    assert node.upload() == 1
    assert node_env.objects("ckpt")["run/state"] == b"t"
    assert node_env.calls["list"] == 3 and node_env.calls["download"] == 2
    assert node_env.calls["upload"] == 2


def test_persistent_server_errors_give_up_with_a_clear_error(node_env: FakeGcs,
                                                             tmp_path: Path) -> None:
    node_env.fail(503, times=1000, op="list")
    with pytest.raises(GcsBucketError, match=r"gs://ckpt/run: list: gave up after 6 tries "
                                             r"\(HTTP 503"):
        copy_bucket(tmp_path / "a").prepare()
    assert node_env.calls["list"] == node_gcs.RETRIES


def test_a_forbidden_bucket_says_which_and_why(node_env: FakeGcs, tmp_path: Path) -> None:
    node_env.deny("ckpt", "read")
    node = copy_bucket(tmp_path / "a")
    with pytest.raises(GcsBucketError, match=r"gs://ckpt/run: list: no access to bucket ckpt "
                                             r"\(HTTP 403") as caught:
        node.prepare()
    assert isinstance(caught.value, OSError)  # the agent's upload loop catches OSError
    assert caught.value.status == 403
    assert node_env.calls["list"] == 1  # not retried


def test_a_read_only_bucket_fails_the_upload(node_env: FakeGcs, tmp_path: Path) -> None:
    node_env.deny("ckpt", "write")
    node = copy_bucket(tmp_path / "a")
    node.prepare()
    (tmp_path / "a" / "f").write_text("data")
    with pytest.raises(OSError, match="upload run/f: no access to bucket ckpt"):
        node.upload()


def test_a_missing_bucket_is_named(node_env: FakeGcs, tmp_path: Path) -> None:
    with pytest.raises(GcsBucketError, match="gs://nope/x: bucket nope does not exist"):
        copy_bucket(tmp_path / "a", "gs://nope/x").prepare()


def test_the_vm_token_is_sent_and_cached(fake: FakeGcs, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with TokenServer() as metadata:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.url)
        monkeypatch.setenv("SKYJOBS_METADATA_URL", metadata.url)
        fake.put("ckpt", "run/a", b"1")
        node = copy_bucket(tmp_path / "a")
        node.prepare()
        (tmp_path / "a" / "b").write_text("2")
        node.upload()
        assert fake.authorization and set(fake.authorization) == {"Bearer tok-1"}
        assert metadata.hits == 1
        assert metadata.flavors == ["Google"]


def test_without_an_emulator_a_node_needs_the_metadata_token(
        fake: FakeGcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    with TokenServer(status=404) as metadata:  # not a GCE VM
        monkeypatch.setenv("SKYJOBS_METADATA_URL", metadata.url)
        with pytest.raises(GcsBucketError, match="no access token from the metadata server"):
            copy_bucket(tmp_path / "a").prepare()


# --- node: MOUNT ---------------------------------------------------------------------------


def test_mount_mode_without_gcsfuse_or_rclone_says_so(node_env: FakeGcs, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    node = GcsBucket(tmp_path / "m", "gs://ckpt/run", "MOUNT")
    with pytest.raises(GcsBucketError, match="gcsfuse or rclone"):
        node.prepare()
    assert node.upload() == 0


@pytest.mark.parametrize("tool", ["gcsfuse", "rclone"])
def test_mount_mode_runs_the_tool_on_the_prefix(tool: str, node_env: FakeGcs, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / tool
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "args"}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    GcsBucket(tmp_path / "m", "gs://ckpt/run/x", "MOUNT").prepare()
    args = (tmp_path / "args").read_text().splitlines()
    if tool == "gcsfuse":
        assert args[-2:] == ["ckpt", str(tmp_path / "m")]
        assert "--implicit-dirs" in args and args[args.index("--only-dir") + 1] == "run/x"
        assert args[args.index("--custom-endpoint") + 1] == node_env.url
    else:
        assert args[:3] == ["mount", ":gcs:ckpt/run/x", str(tmp_path / "m")]
        assert "--gcs-env-auth" in args and "--daemon" in args


def test_bad_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a gs://"):
        GcsBucket(tmp_path, "s3://ckpt", "COPY")
    with pytest.raises(ValueError, match="not a gs://"):
        GcsBucket(tmp_path, "gs://", "COPY")
    with pytest.raises(ValueError, match="unknown mode"):
        GcsBucket(tmp_path, "gs://ckpt", "SYNC")


# --- the node client and google-cloud-storage agree on the wire ----------------------------


def test_the_library_reads_what_the_node_wrote_and_back(node_env: FakeGcs,
                                                        tmp_path: Path) -> None:
    storage = pytest.importorskip("google.cloud.storage")
    from google.auth.credentials import AnonymousCredentials

    client = storage.Client(project=None, credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": node_env.url})
    try:
        client.bucket("ckpt").blob("run/from lib/ü.bin").upload_from_string(b"lib")
        node = copy_bucket(tmp_path / "a")
        node.prepare()
        assert (tmp_path / "a" / "from lib" / "ü.bin").read_bytes() == b"lib"
        (tmp_path / "a" / "from node.bin").write_bytes(b"node" * 1000)
        assert node.upload() == 1
        # The library checks the body against x-goog-hash (crc32c and md5).
        got = client.bucket("ckpt").blob("run/from node.bin").download_as_bytes()
        assert got == b"node" * 1000
    finally:
        client.close()


# --- controller: check_bucket --------------------------------------------------------------


@pytest.fixture
def check(fake: FakeGcs) -> Any:
    pytest.importorskip("google.cloud.storage")
    from google.auth.credentials import AnonymousCredentials

    from skyjobs.providers.gcp.storage import check_bucket

    def run(source: str, deadline: float = 5.0) -> None:
        check_bucket(source, project=None, credentials=AnonymousCredentials(),
                     endpoint=fake.url, deadline=deadline)

    return run


def test_check_accepts_a_usable_bucket_and_leaves_no_probe(fake: FakeGcs, check: Any) -> None:
    fake.put("ckpt", "run/existing", b"keep")
    check("gs://ckpt/run")
    assert fake.objects("ckpt") == {"run/existing": b"keep"}
    assert fake.calls["list"] == 1 and fake.calls["upload"] == 1 and fake.calls["delete"] == 1
    uploads = [p for m, p in fake.requests if m == "POST"]
    assert "ifGenerationMatch=0" in uploads[0]
    deletes = [urllib.parse.unquote(p) for m, p in fake.requests if m == "DELETE"]
    assert f"/o/run/{PROBE}-" in deletes[0]
    check("gs://ckpt")  # the whole bucket
    assert fake.objects("ckpt") == {"run/existing": b"keep"}


def test_check_finds_the_emulator_the_way_the_provider_calls_it(
        fake: FakeGcs, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("google.cloud.storage")
    from google.auth.credentials import AnonymousCredentials

    from skyjobs.providers.gcp.storage import check_bucket

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.url)
    check_bucket("gs://ckpt/run", project="p", credentials=AnonymousCredentials(),
                 endpoint=None)
    assert fake.calls["upload"] == 1 and fake.objects("ckpt") == {}


def test_check_names_a_missing_bucket(check: Any) -> None:
    with pytest.raises(SpecError, match=r"^gs://nope/run: bucket nope does not exist$"):
        check("gs://nope/run")


def test_check_refuses_a_read_only_bucket(fake: FakeGcs, check: Any) -> None:
    fake.deny("ckpt", "write")
    with pytest.raises(SpecError, match=r"gs://ckpt/run: the controller's GCP credentials "
                                        r"cannot read and write bucket ckpt \(write: HTTP 403"):
        check("gs://ckpt/run")
    assert fake.objects("ckpt") == {}


def test_check_refuses_an_unreadable_bucket(fake: FakeGcs, check: Any) -> None:
    fake.deny("ckpt", "read")
    with pytest.raises(SpecError, match=r"cannot read and write bucket ckpt \(list: HTTP 403"):
        check("gs://ckpt/run")
    assert fake.calls["upload"] == 0


def test_check_a_probe_that_cannot_be_deleted_fails_too(fake: FakeGcs, check: Any) -> None:
    fake.deny("ckpt", "delete")  # objectCreator: could never overwrite a checkpoint
    with pytest.raises(SpecError, match=r"cannot read and write bucket ckpt \(delete: HTTP 403"):
        check("gs://ckpt/run")


def test_check_retries_transient_errors(fake: FakeGcs, check: Any) -> None:
    fake.fail(503, times=1, op="list")
    fake.fail(503, times=1, op="upload")
    check("gs://ckpt/run")
    assert fake.objects("ckpt") == {}
    assert fake.calls["list"] == 2 and fake.calls["upload"] == 2


def test_check_persistent_server_errors_are_provider_errors(fake: FakeGcs, check: Any) -> None:
    fake.fail(503, times=1000, op="list")
    with pytest.raises(ProviderError) as caught:
        check("gs://ckpt/run", deadline=0.5)
    assert not isinstance(caught.value, SpecError)
    assert "ckpt" in str(caught.value)


def test_check_an_unreachable_endpoint_is_a_provider_error(check: Any) -> None:
    from google.auth.credentials import AnonymousCredentials

    from skyjobs.providers.gcp.storage import check_bucket

    with pytest.raises(ProviderError, match="gs://ckpt: checking bucket ckpt"):
        check_bucket("gs://ckpt", project=None, credentials=AnonymousCredentials(),
                     endpoint=_refused_url(), deadline=0.5)


def test_check_refuses_what_is_not_a_gs_source(check: Any) -> None:
    with pytest.raises(SpecError, match="not a gs://"):
        check("s3://ckpt/run")


# --- parsers -------------------------------------------------------------------------------


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)))
def test_rfc3339_matches_datetime(when: datetime) -> None:
    when = when.replace(tzinfo=UTC, microsecond=when.microsecond // 1000 * 1000)
    text = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    ns = rfc3339_ns(text)
    back = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
    assert back == when and ns % 1000 == 0


def test_rfc3339_without_fraction_or_zone() -> None:
    assert rfc3339_ns("1970-01-01T00:00:01Z") == 1_000_000_000
    with pytest.raises(ValueError):
        rfc3339_ns("1970-01-01T00:00:01")


@given(st.integers(min_value=0, max_value=2**50))
def test_range_end_round_trips(last: int) -> None:
    assert range_end(f"bytes=0-{last}") == last + 1


@given(st.text(max_size=30))
def test_range_end_takes_only_well_formed_headers(header: str) -> None:
    try:
        end = range_end(header)
    except ValueError:
        assert re.fullmatch(r"bytes=0-[0-9]+", header.strip()) is None
        return
    assert end == 0 if not header.strip() else end == int(header.strip()[len("bytes=0-"):]) + 1


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
def test_quote_name_is_one_path_segment(name: str) -> None:
    quoted = quote_name(name)
    assert "/" not in quoted and "?" not in quoted and "#" not in quoted
    assert urllib.parse.unquote(quoted) == name


@given(st.text(alphabet="ab./\\ -_", max_size=20), st.sampled_from(["", "run", "a/b"]))
def test_relative_names_never_leave_the_target(name: str, prefix: str) -> None:
    full = f"{prefix}/{name}" if prefix else name
    rel = relative_name(full, prefix)
    if rel is None:
        return
    parts = PurePosixPath(rel).parts
    assert parts and ".." not in parts and not rel.startswith("/")
    assert (Path("/target") / rel).resolve().is_relative_to(Path("/target"))
    assert rel.split("/") == list(parts)  # no empty or "." segments folded away


def test_md5_of_the_hash_header() -> None:
    assert md5_of("crc32c=n03x6A==,md5=XUFAKrxLKna5cZ2REBfFkg==") == "XUFAKrxLKna5cZ2REBfFkg=="
    assert md5_of("crc32c=n03x6A==") is None
    assert md5_of(None) is None


# --- helpers -------------------------------------------------------------------------------


class TokenServer:
    """A GCE metadata server that only hands out the default service account's token."""

    def __init__(self, status: int = 200) -> None:
        self.hits = 0
        self.flavors: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.hits += 1
                outer.flavors.append(self.headers.get("Metadata-Flavor"))
                ok = self.path == node_gcs.TOKEN_PATH and status == 200
                body = json.dumps({"access_token": f"tok-{outer.hits}", "expires_in": 3599,
                                   "token_type": "Bearer"}).encode() if ok else b"nope"
                self.send_response(200 if ok else status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> TokenServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_check_without_any_credentials_is_fatal(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("google.cloud.storage")
    from skyjobs.exceptions import FatalProviderError
    from skyjobs.providers.gcp.storage import check_bucket

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    with pytest.raises(FatalProviderError, match="no GCP credentials to check bucket ckpt"):
        check_bucket("gs://ckpt", project=None, credentials=None, endpoint=None)


def test_a_file_over_8_mib_goes_up_in_default_chunks(node_env: FakeGcs, tmp_path: Path) -> None:
    data = os.urandom(node_gcs.RESUMABLE_THRESHOLD + 1024)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "big.pt").write_bytes(data)
    assert copy_bucket(tmp_path / "a").upload() == 1
    assert node_env.objects("ckpt")["run/big.pt"] == data
    assert node_env.calls["upload_chunk"] == 2
