"""Transport to Label Studio's REST API: authentication, retries, JSON, errors.

Authentication comes from label-studio-sdk 2.x's ``LabelStudio`` client: it tells a legacy token
(``Authorization: Token ...``) from a personal access token (a JWT refresh token, exchanged at
/api/token/refresh/ for short-lived ``Bearer`` access tokens and refreshed when they expire).
Every call goes through that client with our own retries: connection errors and 5xx are retried
with backoff (RETRY_DELAYS), then LabelStudioUnavailable says Label Studio did not answer;
401/403 raise LabelStudioTokenRejected at once, naming LABEL_STUDIO_API_KEY; other 4xx raise
LabelStudioRejected.
"""

from __future__ import annotations

import logging
import threading
import time
from json import JSONDecodeError
from typing import Any, Mapping, Sequence

import httpx
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from ..config import Settings
from ..errors import LabelStudioRejected, LabelStudioTokenRejected, LabelStudioUnavailable

log = logging.getLogger(__name__)

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)  # 5 tries over ~15 s before Label Studio counts as down
REQUEST_TIMEOUT = 120.0  # seconds per REST call (imports and big pages are slow on SQLite)
_SAFE_METHODS = ("GET", "HEAD", "PUT", "PATCH", "DELETE")  # retried on any transport error or 5xx
# A POST is retried only where it cannot have run: 503 (refused before any work). After a 502 or
# 504 the proxy may have handed it on, and Label Studio goes on importing after the proxy stops
# waiting (nginx: 60 s), so a second try would store the predictions twice.
_UNPROCESSED = (503,)


class Transport:
    """Authenticated JSON calls to one Label Studio, retried. Thread-safe; close it when done.

    settings : Settings, reads label_studio_url and label_studio_api_key.
    retry_delays : seconds slept between tries of a failing call (connection error or 5xx).
    """

    def __init__(self, settings: Settings, *, retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        self.base = settings.label_studio_url.rstrip("/")
        self.retry_delays = tuple(retry_delays)
        self._api_key = settings.label_studio_api_key.strip()
        self._sdk_lock = threading.Lock()
        self._sdk_client: LabelStudio | None = None

    @property
    def _sdk(self) -> LabelStudio:
        """The SDK client, made on first use (it checks a JWT's expiry when built)."""
        with self._sdk_lock:
            if self._sdk_client is None:
                self._sdk_client = self._connect()
            return self._sdk_client

    def _connect(self) -> LabelStudio:
        if not self._api_key:
            raise LabelStudioTokenRejected(
                "LABEL_STUDIO_API_KEY is empty: set it to a personal access token or legacy token of a "
                "Label Studio user (Label Studio → Account & Settings)")
        try:
            # The trailing slash keeps a sub-path when the SDK urljoins /api/token/refresh/.
            return LabelStudio(base_url=self.base + "/", api_key=self._api_key, timeout=REQUEST_TIMEOUT,
                               max_retries=0, follow_redirects=False)
        except ApiError as exc:  # an expired or malformed JWT
            raise LabelStudioTokenRejected(
                f"Label Studio at {self.base} rejected the token ({_detail(exc.body)}): check "
                "LABEL_STUDIO_API_KEY (create a new personal access token in Account & Settings)") from None

    def auth_headers(self) -> dict[str, str]:
        """Authorization for Label Studio's own origin; refreshes a PAT's access token when due.
        Raises LabelStudioTokenRejected, or LabelStudioUnavailable when the refresh fails otherwise."""
        wrapper = self._sdk._client_wrapper  # the SDK's token handling; private, kept inside ls/
        try:
            return {"Authorization": wrapper.get_headers()["Authorization"]}
        except ApiError as exc:
            if exc.status_code in (401, 403):
                raise self._rejected(exc.status_code, "POST /api/token/refresh/", _detail(exc.body)) from None
            raise LabelStudioUnavailable(f"could not refresh the access token (HTTP {exc.status_code})") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise LabelStudioUnavailable(
                f"could not refresh the access token ({type(exc).__name__}: {exc})") from None

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
                files: Mapping[str, Any] | None = None, timeout: float = REQUEST_TIMEOUT,
                retry_timeouts: bool = True, once: bool = False) -> Any:
        """JSON of one Label Studio API call (None for an empty answer).

        Retried on connection errors and 5xx (a POST only when it cannot have run; with
        ``retry_timeouts=False`` not after an answer that did not come in ``timeout``; with
        ``once`` never: the caller retries, e.g. a read-modify-write that must read again); then
        LabelStudioUnavailable. 401/403 raise LabelStudioTokenRejected; other 4xx and redirects
        raise LabelStudioRejected with Label Studio's message.
        """
        method = method.upper()
        what = f"{method} {path}"
        last = ""
        for attempt in range(len(self.retry_delays) + 1):
            try:
                resp = self._sdk._client_wrapper.httpx_client.request(
                    path, method=method, params=dict(params) if params else None, json=json,
                    files=dict(files) if files else None,
                    request_options={"max_retries": 0, "timeout_in_seconds": int(timeout)})
            except ApiError as exc:  # raised while refreshing a PAT's access token
                if exc.status_code in (401, 403):
                    raise self._rejected(exc.status_code, what, _detail(exc.body)) from None
                last = f"token refresh answered HTTP {exc.status_code}"
                retry = exc.status_code is None or exc.status_code >= 500
            except JSONDecodeError as exc:  # a token refresh answered with something other than JSON
                last = f"token refresh failed ({exc})"
                retry = True
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                retry = (method in _SAFE_METHODS or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))) \
                    and (retry_timeouts or not isinstance(exc, httpx.ReadTimeout))
            else:
                status = resp.status_code
                if status < 300:
                    return self._json(resp, what)
                if status < 500:
                    raise self._refused(resp, what)
                last = f"HTTP {status}: {_detail(_json_or_text(resp))}"
                retry = method in _SAFE_METHODS or status in _UNPROCESSED
            if once or not retry or attempt == len(self.retry_delays):
                break
            delay = self.retry_delays[attempt]
            log.warning("Label Studio %s: %s; retrying in %.1f s", what, last, delay)
            time.sleep(delay)
        raise LabelStudioUnavailable(
            f"Label Studio at {self.base} did not answer {what} after {attempt + 1} tries ({last}); is it running "
            "and is LABEL_STUDIO_URL right?")

    def _refused(self, resp: httpx.Response, what: str) -> LabelStudioTokenRejected | LabelStudioRejected:
        """The error for a 3xx or 4xx answer."""
        status = resp.status_code
        if status in (401, 403):
            return self._rejected(status, what, _detail(_json_or_text(resp)))
        if status < 400:
            return LabelStudioRejected(
                f"Label Studio at {self.base} redirected {what} to {resp.headers.get('location')!r}: set "
                "LABEL_STUDIO_URL to the address Label Studio is served at (http or https, sub-path)", status)
        return LabelStudioRejected(f"Label Studio refused {what} (HTTP {status}): {_detail(_json_or_text(resp))}",
                                   status)

    def _rejected(self, status: int, what: str, detail: str) -> LabelStudioTokenRejected:
        if status == 401:
            return LabelStudioTokenRejected(
                f"Label Studio at {self.base} rejected the token (HTTP 401 on {what}: {detail}): check "
                "LABEL_STUDIO_API_KEY (a personal access token or, if the organization allows them, a legacy token)")
        return LabelStudioTokenRejected(
            f"Label Studio at {self.base} rejected the token for {what} (HTTP 403: {detail}): check that "
            "LABEL_STUDIO_API_KEY belongs to a user who may read and change this project")

    def _json(self, resp: httpx.Response, what: str) -> Any:
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            kind = resp.headers.get("content-type", "no Content-Type")
            raise LabelStudioUnavailable(
                f"{self.base} answered {what} with {kind}, not JSON: is LABEL_STUDIO_URL the address of Label "
                "Studio?") from None

    def close(self) -> None:
        """Close the HTTP connections; a ``with`` block does it on exit."""
        with self._sdk_lock:
            if self._sdk_client is not None:
                self._sdk_client._client_wrapper.httpx_client.httpx_client.close()

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def _detail(body: Any) -> str:
    """Label Studio's error text: its ``detail``/validation messages, else the body, shortened."""
    if isinstance(body, dict):
        detail, errors = body.get("detail"), body.get("validation_errors")
        if errors:  # {"detail": "Validation error", "validation_errors": {"title": [...]}}
            return f"{detail or 'validation error'}: {errors}"[:500]
        if detail:
            return str(detail)[:300]
    return str(body)[:300] or "no details"
