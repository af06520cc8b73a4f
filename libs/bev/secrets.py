"""How a service gets its credentials at start: Vault (OpenBao in the embedded fleet) over AppRole.

Every credential lives in KV v2 under `<mount>/bev/<name>` (mount from `VaultSettings.mount`).
A service logs in with its role_id and a single-use secret_id, reads the secrets it is granted
(its manifest entry declares which: `Manifest.secrets_of`) and keeps its token alive with
`renew_forever`. Anything that goes wrong becomes SecretsUnavailable with one line that says what to do, because it is printed at start.

The API is synchronous: login() and read() run once while a service starts, before it serves
anything, so blocking there is harmless. From a running event loop wrap them in
`asyncio.to_thread`. The one long-lived part, renew_forever(), is async and runs every Vault call
in a worker thread itself.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hvac
import hvac.exceptions
import requests
from prometheus_client import Counter

from bev.settings import VaultSettings
from bev.telemetry import get_logger

log = get_logger(__name__)

_MULTIERROR_HEADER = re.compile(r"^\s*\d+ errors? occurred:\s*")

# Folder under the KV mount that holds the fleet's secrets.
SECRET_PREFIX = "bev"

# Never renew more often than this, even for very short TTLs.
MIN_RENEW_INTERVAL_S = 1.0
# After a failed renewal, retry at most this long later (sooner when the token expires sooner).
MAX_RETRY_INTERVAL_S = 30.0

TOKEN_RENEWALS = Counter("bev_vault_token_renewals_total", "Vault token renewals, by outcome (ok or failed)",
                         ["service", "outcome"])


class SecretsUnavailable(Exception):
    """Credentials could not be obtained; str() is one line meant for the operator."""


def secret_path(name: str) -> str:
    """Path of secret `name` inside the KV mount."""
    return f"{SECRET_PREFIX}/{name}"


def _network_reason(exc: BaseException) -> str:
    """'connection refused', 'name or service not known', ... from requests' nested exceptions."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror.lower()
        for nested in (
            *current.args,
            getattr(current, "reason", None),
            current.__cause__,
            current.__context__,
        ):
            if isinstance(nested, BaseException):
                pending.append(nested)
    return type(exc).__name__


def _vault_reason(exc: hvac.exceptions.VaultError) -> str:
    # Vault wraps some errors as "1 error occurred:\n\t* permission denied\n\n"; keep the items.
    errors = [
        item.strip()
        for error in (exc.errors or [])
        for item in _MULTIERROR_HEADER.sub("", str(error)).split("* ")
        if item.strip()
    ]
    if errors:
        return "; ".join(errors)
    if isinstance(exc, hvac.exceptions.InvalidPath):
        return "not found"
    if isinstance(exc, hvac.exceptions.Forbidden):
        return "permission denied"
    return type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def vault_errors(addr: str, failure: str) -> Iterator[None]:
    """Turn hvac/requests exceptions into SecretsUnavailable("<failure>: <reason>").

    An unreachable or sealed Vault gets its own message, since the fix is not in the request.
    """
    try:
        yield
    except requests.exceptions.Timeout as exc:
        raise SecretsUnavailable(
            f"Vault at {addr} did not answer in time ({failure}); check it or BEV_VAULT__ADDR"
        ) from exc
    except requests.exceptions.ConnectionError as exc:
        reason = _network_reason(exc)
        raise SecretsUnavailable(
            f"Vault at {addr} is unreachable ({reason}); start it or set BEV_VAULT__ADDR"
        ) from exc
    except hvac.exceptions.VaultDown as exc:
        raise SecretsUnavailable(f"Vault at {addr} is sealed or down; unseal it ({failure})") from exc
    except hvac.exceptions.VaultError as exc:
        raise SecretsUnavailable(_one_line(f"{failure}: {_vault_reason(exc)}")) from exc
    except requests.exceptions.RequestException as exc:
        raise SecretsUnavailable(_one_line(f"{failure}: {exc}")) from exc


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds`; True if `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


class VaultSecrets:
    """One service's session with Vault: login, read its secrets, keep the token alive."""

    def __init__(self, settings: VaultSettings, service: str) -> None:
        self.settings = settings
        self.service = service
        # token="" rather than None: hvac would otherwise pick up VAULT_TOKEN or ~/.vault-token.
        # verify: the CA that signed Vault's certificate in production (BEV_VAULT__CA_CERT), else system CAs.
        verify: bool | str = settings.ca_cert or True
        self._client: Any = hvac.Client(url=settings.addr, token="", timeout=settings.timeout_s, verify=verify)
        self._logged_in = False
        self._ttl = 0.0
        self._renewable = False
        self._expires_at: float | None = None

    @property
    def ttl(self) -> float:
        """Lease duration in seconds granted by the last login or renewal (0: never expires)."""
        return self._ttl

    def login(self) -> None:
        """AppRole login when role_id and secret_id are set, else the operator's token."""
        settings = self.settings
        if settings.role_id and settings.secret_id:
            failure = f"Vault AppRole login for service '{self.service}' failed"
            with vault_errors(settings.addr, failure):
                response = self._client.auth.approle.login(
                    role_id=settings.role_id, secret_id=settings.secret_id
                )
            auth = response["auth"]
            self._set_lease(float(auth["lease_duration"]), bool(auth["renewable"]))
        elif settings.token:
            self._client.token = settings.token
            failure = f"Vault token for service '{self.service}' was rejected"
            with vault_errors(settings.addr, failure):
                data = self._client.auth.token.lookup_self()["data"]
            self._set_lease(float(data["ttl"]), bool(data.get("renewable", False)))  # a root token has no such key
        else:
            raise SecretsUnavailable(
                f"no Vault credentials for service '{self.service}': set BEV_VAULT__ROLE_ID and "
                "BEV_VAULT__SECRET_ID (or BEV_VAULT__TOKEN for an operator shell)"
            )
        self._logged_in = True

    def read(self, name: str) -> dict[str, str]:
        """The key/value pairs of secret `name` (logs in first if needed)."""
        if not self._logged_in:
            self.login()
        path = secret_path(name)
        failure = f"Vault read of '{self.settings.mount}/{path}' for service '{self.service}' failed"
        with vault_errors(self.settings.addr, failure):
            response = self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.settings.mount, raise_on_deleted_version=True
            )
        data = response["data"]["data"]
        if not isinstance(data, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in data.items()
        ):
            raise SecretsUnavailable(f"{failure}: values must be strings; re-seed the secret")
        return dict(data)

    def renew(self) -> float:
        """Renew the token once (blocking); returns the new TTL in seconds."""
        failure = f"Vault token renewal for service '{self.service}' failed"
        with vault_errors(self.settings.addr, failure):
            auth = self._client.auth.token.renew_self()["auth"]
        self._set_lease(float(auth["lease_duration"]), bool(auth["renewable"]))
        return self._ttl

    async def renew_forever(self, stop: asyncio.Event) -> None:
        """Renew the token at about 2/3 of its TTL until `stop` is set.

        A failed renewal is logged and retried sooner; the loop only ends on `stop`, or when the
        token cannot be renewed any more (expired, revoked, or not renewable), which is logged as well.
        """
        if not self._logged_in:
            raise RuntimeError("VaultSecrets.renew_forever() needs login() first")
        delay = self._renew_delay()
        # Both series from 0, so the first failure is an increase an alert rule sees.
        renewed, failed = (TOKEN_RENEWALS.labels(self.service, outcome) for outcome in ("ok", "failed"))
        while delay is not None:
            if await _stopped_within(stop, delay):
                return
            try:
                await asyncio.to_thread(self.renew)
            except SecretsUnavailable as exc:
                failed.inc()
                if isinstance(exc.__cause__, hvac.exceptions.Forbidden):
                    # 403 on renew-self: Vault no longer honours the token (revoked, or expired on its
                    # side); retrying until our own expiry estimate cannot bring it back.
                    log.error("vault token revoked or invalid; restart the service to log in again",
                              service=self.service, error=str(exc))
                    return
                remaining = self._remaining()
                if remaining <= 0:
                    log.error("vault token expired; restart the service to log in again",
                              service=self.service, error=str(exc))
                    return
                delay = max(MIN_RENEW_INTERVAL_S, min(MAX_RETRY_INTERVAL_S, remaining / 3))
                log.warning("vault token renewal failed; retrying", service=self.service, error=str(exc),
                            retry_in_s=round(delay))
            else:
                renewed.inc()
                log.debug("vault token renewed", service=self.service, ttl_s=round(self._ttl))
                delay = self._renew_delay()
        log.info("vault token does not expire or is not renewable; not renewing", service=self.service)

    def _set_lease(self, ttl: float, renewable: bool) -> None:
        self._ttl = ttl
        self._renewable = renewable
        self._expires_at = time.monotonic() + ttl if ttl > 0 else None

    def _remaining(self) -> float:
        return float("inf") if self._expires_at is None else self._expires_at - time.monotonic()

    def _renew_delay(self) -> float | None:
        """Seconds until the next renewal is due (2/3 into the lease), None if none is needed."""
        if not self._renewable or self._expires_at is None:
            return None
        return max(MIN_RENEW_INTERVAL_S, self._remaining() - self._ttl / 3)
