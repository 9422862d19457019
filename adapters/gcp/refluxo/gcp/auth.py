"""Authenticating Cloud Tasks deliveries: the OIDC token Cloud Tasks attaches to each task.

Cloud Tasks signs an ID token for the queue's service account, with the function's URL as the
audience. :class:`OidcVerifier` checks the signature against Google's certificates (fetched
once and cached), the audience, the expiry, and that the token was issued to the expected
service account.

A function deployed with ``--no-allow-unauthenticated`` sits behind Google's front end, which
verifies one token (and the caller's invoker role) before the request arrives, and replaces
its signature with ``SIGNATURE_REMOVED_BY_GOOGLE``. The token it verifies is the one in
``X-Serverless-Authorization`` when that header is present, and then ``Authorization`` is
passed through *unverified*; otherwise it is the one in ``Authorization``. So with
``trust_platform_verification`` a stripped token is accepted on its claims alone (audience,
issuer, expiry, service account) only when it arrived in the header the front end verified;
a stripped token anywhere else is refused, and every other token has its signature checked.
Never enable it on a function that allows unauthenticated calls, where the front end
verifies nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from refluxo.core.http import HttpRequest

logger = logging.getLogger("refluxo.gcp.auth")

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
SIGNATURE_REMOVED = "SIGNATURE_REMOVED_BY_GOOGLE"
_ISSUERS = ("https://accounts.google.com", "accounts.google.com")


class OidcVerifier:
    """Accepts a request whose ``Authorization: Bearer`` ID token is valid for this function.

    Args:
        audience: the audience the tokens carry (the function's URL).
        service_account: the e-mail the tokens must be issued to.
        certs_url: where the signing certificates are (Google's, unless testing).
        cache_seconds: how long fetched certificates are reused.
        trust_platform_verification: accept a token whose signature Google's front end
            verified and removed (see the module docstring), checking its claims.
    """

    def __init__(
        self,
        audience: str,
        service_account: str,
        *,
        certs_url: str = GOOGLE_CERTS_URL,
        cache_seconds: float = 3600.0,
        trust_platform_verification: bool = False,
    ) -> None:
        self.trust_platform_verification = trust_platform_verification
        self.audience = audience
        self.service_account = service_account
        self.certs_url = certs_url
        self.cache_seconds = cache_seconds
        self._certs: Mapping[str, str] | None = None
        self._fetched_at = 0.0

    def _fetch_certs(self) -> Mapping[str, str]:
        import google.auth.transport.requests as transport
        from google.oauth2 import id_token

        now = time.monotonic()
        if self._certs is None or now - self._fetched_at > self.cache_seconds:
            self._certs = id_token._fetch_certs(  # type: ignore[no-untyped-call]
                transport.Request(), self.certs_url
            )
            self._fetched_at = now
        return self._certs

    def verify(self, token: str, *, platform_verified: bool = False) -> Mapping[str, Any]:
        """Return the token's claims; raise ValueError when it is not acceptable.

        Args:
            token: the ID token.
            platform_verified: the token came in the header Google's front end verified (see
                the module docstring); only then is a removed signature acceptable, and only
                with ``trust_platform_verification``.
        """
        parts = token.split(".")
        if len(parts) == 3 and parts[2] == SIGNATURE_REMOVED:
            if not self.trust_platform_verification:
                raise ValueError("the token's signature was removed and this endpoint checks it")
            if not platform_verified:
                raise ValueError(
                    "the token's signature was removed, but not by the platform: it is not in "
                    "the header the platform verified"
                )
            claims = self._platform_verified_claims(parts[1])
        else:
            from google.auth import jwt

            claims = jwt.decode(  # type: ignore[no-untyped-call]
                token, certs=self._fetch_certs(), audience=self.audience, clock_skew_in_seconds=10
            )
        if claims.get("iss") not in _ISSUERS:
            raise ValueError(f"unexpected issuer {claims.get('iss')!r}")
        if claims.get("email") != self.service_account or not claims.get("email_verified"):
            raise ValueError(f"token issued to {claims.get('email')!r}, not the queue's account")
        return claims

    def _platform_verified_claims(self, payload: str) -> Mapping[str, Any]:
        # Google's front end checked the signature; what it cannot know is who we expect.
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError as exc:
            raise ValueError(f"the token's claims are not readable: {exc}") from None
        if not isinstance(claims, dict):
            raise ValueError("the token's claims are not an object")
        audiences = claims.get("aud")
        if self.audience not in (audiences if isinstance(audiences, list) else [audiences]):
            raise ValueError(f"token audience {audiences!r} is not {self.audience!r}")
        expiry = claims.get("exp")
        if not isinstance(expiry, int | float) or time.time() > expiry + 10:
            raise ValueError("the token has expired")
        return claims

    async def __call__(self, request: HttpRequest) -> bool:
        serverless = request.header(SERVERLESS_AUTHORIZATION)
        # (header value, whether the front end verified it): with X-Serverless-Authorization
        # present, Authorization reached us unverified.
        candidates = (
            [(serverless, True), (request.header("authorization"), False)]
            if serverless is not None
            else [(request.header("authorization"), True)]
        )
        for value, platform_verified in candidates:
            scheme, _, token = (value or "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                continue
            try:
                await asyncio.to_thread(
                    self.verify, token.strip(), platform_verified=platform_verified
                )
            except Exception as exc:  # any failure to verify means: not authenticated
                logger.warning("dispatch token refused: %s", exc)
                continue
            return True
        return False


SERVERLESS_AUTHORIZATION = "x-serverless-authorization"
"""The header Google's front end verifies, when present, instead of ``Authorization``."""


DISPATCH_TOKEN_HEADER = "x-refluxo-dispatch-token"
"""The header that carries a shared dispatch secret where OIDC is not available (emulators)."""


def shared_secret(secret: str) -> Any:
    """An authenticator that accepts the ``X-Refluxo-Dispatch-Token`` header equal to ``secret``."""

    async def check(request: HttpRequest) -> bool:
        given = request.header(DISPATCH_TOKEN_HEADER) or ""
        # Bytes: compare_digest refuses non-ASCII text, and a header may hold any.
        return hmac.compare_digest(
            given.encode("utf-8", "surrogatepass"), secret.encode("utf-8", "surrogatepass")
        )

    return check
