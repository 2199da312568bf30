"""The Hub transport (:mod:`carl.remote`): what a failed Hub call tells the user (one line naming
what failed and what to do, for each kind of failure huggingface_hub raises, and network failures
found anywhere in the chain), what only a path can be, revisions reaching the download, and
uploads."""

import socket

import httpx2
import pytest
from huggingface_hub import constants, errors
from typer.testing import CliRunner

import carl.remote as remote
from carl.cli import app
from carl.errors import CarlError
from carl.model import ContinuousAR, load_model, open_model
from carl.remote import _is_network_error, hub_failure, looks_like_path, resolve_folder


def http_error(status: int, message: str, kind=errors.HfHubHTTPError) -> errors.HfHubHTTPError:
    request = httpx2.Request("GET", "https://huggingface.co/api/models/me/x")
    return kind(message, response=httpx2.Response(status, request=request))


def chained(exc: BaseException, depth: int, via: str = "__cause__") -> BaseException:
    """``exc`` wrapped ``depth`` times in RuntimeErrors, as ``raise ... from`` (or ``during``) does."""
    for _ in range(depth):
        outer = RuntimeError("wrapped")
        setattr(outer, via, exc)
        exc = outer
    return exc


LOGIN = "not logged in, or no write access: run `hf auth login` (or set HF_TOKEN)"
NETWORK = "cannot reach huggingface.co; check the network connection (or HTTPS_PROXY) and try again"


@pytest.mark.parametrize(
    "exc, hint",
    [
        (errors.OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE is set; unset it to reach the Hub"),
        (errors.LocalTokenNotFoundError("no token"), LOGIN),
        (http_error(401, "401 Client Error: Unauthorized"), LOGIN),
        (http_error(403, "403 Forbidden: no write access"), LOGIN),
        (http_error(404, "Repository Not Found", errors.RepositoryNotFoundError),
         "no such repository on the Hub (a private one needs `hf auth login`)"),
        (http_error(500, "500 Server Error\nrequest id: 42"), "the Hub answered 500: 500 Server Error"),
        (http_error(404, "404 Not Found\ndetails"), "the Hub answered 404: 404 Not Found"),
        (ConnectionError("[Errno -2] Name or service not known"), NETWORK),
        (httpx2.ConnectError("connection refused"), NETWORK),
        (chained(socket.gaierror(-2, "Name or service not known"), 2), NETWORK),
        (ValueError("bad value\nsecond line"), "ValueError: bad value"),
        (KeyError(), "KeyError: "),
    ],
    ids=["offline", "no-token", "401", "403", "no-repo", "500", "404-file", "connection", "httpx", "socket-in-chain",
         "other", "other-empty"],
)
def test_each_failure_gets_its_own_hint(exc, hint, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    failure = hub_failure(exc, "cannot push to me/x")
    assert isinstance(failure, CarlError)
    assert str(failure) == f"cannot push to me/x: {hint}"


@pytest.mark.parametrize("offline, hint", [
    (True, "it is not in the Hub cache, and HF_HUB_OFFLINE is set (unset it to download)"),
    (False, "LocalEntryNotFoundError: not cached"),
])
def test_a_cache_miss_blames_offline_mode_only_when_it_is_set(offline, hint, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    assert str(hub_failure(errors.LocalEntryNotFoundError("not cached"), "no such folder 'me/x'")) == f"no such folder 'me/x': {hint}"


def test_offline_mode_does_not_change_the_hint_of_other_failures(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert str(hub_failure(ValueError("x"), "w")) == "w: ValueError: x"


def test_offline_uncached_repo_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["sample", "nobody/not-cached-anywhere"])
    assert result.exit_code != 0
    assert str(result.exception) == ("no such folder 'nobody/not-cached-anywhere', and it cannot be fetched from the Hub: "
                                     "it is not in the Hub cache, and HF_HUB_OFFLINE is set (unset it to download)")


@pytest.mark.parametrize("via", ["__cause__", "__context__"])
def test_network_errors_are_found_ten_links_deep_and_no_deeper(via):
    assert _is_network_error(chained(TimeoutError("timed out"), 0, via)) is False  # not a network class by name
    found = chained(httpx2.ConnectTimeout("slow"), 9, via)  # the 10th exception of the chain
    assert _is_network_error(found) is True
    assert _is_network_error(chained(httpx2.ConnectTimeout("slow"), 10, via)) is False


def test_a_cyclic_chain_ends_and_offline_mode_is_not_a_network_error():
    loop = RuntimeError("a")
    loop.__context__ = RuntimeError("b")
    loop.__context__.__context__ = loop
    assert _is_network_error(loop) is False
    assert _is_network_error(None) is False
    assert _is_network_error(errors.OfflineModeIsEnabled("offline")) is False  # a ConnectionError by class
    assert _is_network_error(chained(errors.OfflineModeIsEnabled("offline"), 1)) is False


@pytest.mark.parametrize("name", ["ConnectError", "ConnectionError", "ConnectTimeout", "NetworkError", "TransportError",
                                  "Timeout", "TimeoutException", "gaierror"])
def test_every_network_class_name_counts_even_through_a_subclass(name):
    base = type(name, (Exception,), {})
    sub = type("Sub", (base,), {})
    assert _is_network_error(base("x")) and _is_network_error(sub("x"))


# ---------------------------------------------------------------------------------------------
# Resolving a reference: a path is never looked up on the Hub; a revision reaches the download


@pytest.mark.parametrize("reference, path", [
    ("./model", True), ("/model", True), ("model/", True), ("/abs/model", True), ("~/model", True), ("\\\\server\\share", True), ("runs/x/", True),
    ("runs\\x\\", True), ("runs/x/checkpoints", True), ("model", False), ("me/model", False), ("me/model.v2", False),
])
def test_what_only_a_path_can_be(reference, path):
    assert looks_like_path(reference) is path


def test_a_revision_reaches_the_hub_download(six_steps, monkeypatch):
    calls = []

    def snapshot_download(repo_id, revision=None):
        calls.append((repo_id, revision))
        return str(six_steps)

    monkeypatch.setattr(remote, "snapshot_download", snapshot_download)
    assert resolve_folder("me/tiny", "v1") == six_steps
    assert open_model("me/tiny", "v2").folder == six_steps
    model, recipe = load_model("me/tiny", "v3")
    assert recipe == open_model(six_steps).recipe and isinstance(model, ContinuousAR)
    assert calls == [("me/tiny", "v1"), ("me/tiny", "v2"), ("me/tiny", "v3")]


class RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, private, exist_ok):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, folder_path, repo_id, commit_message):
        self.calls.append(("upload_folder", folder_path, repo_id, commit_message))
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()


def test_an_upload_is_public_with_carl_s_message_unless_told_otherwise(tmp_path):
    api = RecordingApi()
    assert remote.upload_folder(tmp_path, "me/tiny", api=api) == "https://huggingface.co/me/tiny/commit/1"
    assert api.calls == [("create_repo", "me/tiny", False, True), ("upload_folder", str(tmp_path), "me/tiny", "Upload carl model")]
    api = RecordingApi()
    remote.upload_folder(tmp_path, "me/tiny", api=api, private=True, commit_message="v2")
    assert api.calls == [("create_repo", "me/tiny", True, True), ("upload_folder", str(tmp_path), "me/tiny", "v2")]


def test_an_upload_to_what_is_no_repo_id_is_refused_before_any_hub_call(tmp_path):
    api = RecordingApi()
    with pytest.raises(CarlError, match=r"^'me/not a repo' is not a Hub repo id \(user/name\)"):
        remote.upload_folder(tmp_path, "me/not a repo", api=api)
    assert api.calls == []


def test_a_network_failure_anywhere_in_the_chain_is_a_hub_error():
    assert remote.is_hub_error(http_error(500, "server"))
    assert remote.is_hub_error(chained(socket.gaierror("no name"), 3))
    assert remote.is_hub_error(httpx2.ConnectError("refused"))
    assert not remote.is_hub_error(chained(ValueError("a bug"), 3))
