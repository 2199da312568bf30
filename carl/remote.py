"""carl's Hub transport: folders that may live on the Hugging Face Hub.

- :func:`resolve_folder`: the local folder a reference names (a local path, a name a plugin
  ships, or a Hub repo id downloaded once into the Hub cache; offline, read from the cache);
- :func:`upload_folder`: a prepared local folder uploaded to a Hub repo (created if needed);
- :func:`hub_failure`: what went wrong with a Hub call, in one line that says what to do.

It knows nothing of what the folders hold (model folders: :mod:`carl.model.folder`; tokenizer
folders: :mod:`carl.tokenizers.pretrained`). It sits with the vocabulary, below the model,
because components resolve references while they are built (a recipe's tokenizer ``path`` may
be a Hub repo id).
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download

from carl.errors import CarlError
from carl.plugins import pretrained_folders


def looks_like_path(reference: str) -> bool:
    """True for what can only be a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x/``),
    never a Hub repo id (``name`` or ``user/name``)."""
    return reference.startswith((".", "/", "~", "\\")) or reference.endswith(("/", "\\")) or reference.count("/") > 1


def resolve_folder(reference: str | Path, revision: str | None = None) -> Path:
    """The local folder a reference names: an existing local folder as it is; else the name of a
    folder a plugin ships (``register_pretrained``, e.g. ``mnist-ae``); else a Hub repo id,
    downloaded (or found in the Hub cache). A local path is never looked up on the Hub.

    Raises:
        CarlError: one line: a file instead of a folder, no such folder, or why the Hub failed.
    """
    path = Path(reference).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CarlError(f"{path} is a file; give a model folder, a checkpoint folder or a Hub repo id")
        return path
    text = str(reference)
    shipped = pretrained_folders()
    if text in shipped:
        return shipped[text]
    if looks_like_path(text):
        raise CarlError(f"no such folder: {path}")
    try:
        return Path(snapshot_download(text, revision=revision))
    except Exception as exc:
        raise hub_failure(exc, f"no such folder '{text}', and it cannot be fetched from the Hub") from exc


def check_repo_id(repo_id: str) -> None:
    """Refuse, before any Hub call, what cannot be a Hub repo id (``user/name``)."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except Exception as exc:
        raise CarlError(f"'{repo_id}' is not a Hub repo id (user/name): {exc}") from exc


def upload_folder(folder: Path, repo_id: str, *, private: bool = False, api=None,
                  commit_message: str = "Upload carl model") -> str:
    """Upload every file of ``folder`` to the Hub repo ``repo_id`` (created if needed; public
    unless ``private``); returns the commit URL.

    Raises:
        CarlError: ``repo_id`` is not a repo id, or one line saying why the Hub refused.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    api = api or HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    except Exception as exc:
        raise hub_failure(exc, f"cannot push to {repo_id}") from exc
    return str(getattr(info, "commit_url", info))


def hub_failure(exc: BaseException, what: str) -> CarlError:
    """One line for a failed Hub call: what failed and what to do about it."""
    from huggingface_hub import errors

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.OfflineModeIsEnabled):
        hint = "HF_HUB_OFFLINE is set; unset it to reach the Hub"
    elif isinstance(exc, errors.LocalEntryNotFoundError) and _offline():
        hint = "it is not in the Hub cache, and HF_HUB_OFFLINE is set (unset it to download)"
    elif isinstance(exc, errors.LocalTokenNotFoundError) or status in (401, 403):
        hint = "not logged in, or no write access: run `hf auth login` (or set HF_TOKEN)"
    elif isinstance(exc, errors.RepositoryNotFoundError):
        hint = "no such repository on the Hub (a private one needs `hf auth login`)"
    elif _is_network_error(exc):
        hint = "cannot reach huggingface.co; check the network connection (or HTTPS_PROXY) and try again"
    elif isinstance(exc, errors.HfHubHTTPError):
        hint = f"the Hub answered {status}: {str(exc).splitlines()[0]}"
    else:
        hint = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return CarlError(f"{what}: {hint}")


def is_hub_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from reaching the Hub (huggingface_hub's errors, the network, offline mode)."""
    from huggingface_hub import errors

    hub_errors = (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled,
                  errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.LocalTokenNotFoundError)
    return isinstance(exc, hub_errors) or _is_network_error(exc)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _is_network_error(exc: BaseException | None) -> bool:
    """A connection failure anywhere in the exception's chain (httpx, requests or the socket)."""
    network = {"ConnectError", "ConnectionError", "ConnectTimeout", "NetworkError", "TransportError", "Timeout",
               "TimeoutException", "gaierror"}
    seen = 0
    while exc is not None and seen < 10:
        if any(cls.__name__ in network for cls in type(exc).__mro__):
            from huggingface_hub import errors

            if not isinstance(exc, errors.OfflineModeIsEnabled):
                return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
