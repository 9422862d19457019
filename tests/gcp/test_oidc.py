"""OidcVerifier against real signed ID tokens, shaped like the ones Cloud Tasks attaches.

The test is its own Google: an RSA key and a self-signed X.509 certificate made with
``cryptography``, the ``{kid: certificate}`` map served from a loopback HTTP server as the
certificates URL, and tokens signed with google-auth's own signer. Only the keys are fake: the
verification code path is the production one, HTTP fetch of the certificates included.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from refluxo.core.http import HttpRequest
from refluxo.gcp.auth import OidcVerifier

AUDIENCE = "https://europe-west1-demo-project.cloudfunctions.net/refluxo"
SERVICE_ACCOUNT = "refluxo-runner@demo-project.iam.gserviceaccount.com"
KID = "test-key-1"


@dataclass(frozen=True)
class Key:
    private_pem: bytes
    certificate_pem: str


def make_key(common_name: str) -> Key:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Key(private_pem, cert.public_bytes(serialization.Encoding.PEM).decode())


@pytest.fixture(scope="module")
def google_key() -> Key:
    """The key whose certificate the certificates URL publishes."""
    return make_key("refluxo test issuer")


@pytest.fixture(scope="module")
def impostor_key() -> Key:
    """A key nobody publishes."""
    return make_key("impostor")


@dataclass
class CertsServer:
    url: str
    hits: list[float]


@pytest.fixture
def certs_server(google_key: Key) -> Iterator[CertsServer]:
    """Serves ``{kid: certificate PEM}`` as Google's certificates URL does; counts the fetches."""
    body = json.dumps({KID: google_key.certificate_pem}).encode()
    hits: list[float] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(time.monotonic())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield CertsServer(f"http://127.0.0.1:{server.server_address[1]}/oauth2/v1/certs", hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def verifier(certs_server: CertsServer) -> OidcVerifier:
    return OidcVerifier(AUDIENCE, SERVICE_ACCOUNT, certs_url=certs_server.url)


class FromNow(int):
    """A time claim given as seconds from when the token is made (not when tests are collected)."""


def id_token(key: Key, *, kid: str = KID, **overrides: Any) -> str:
    """An ID token as Cloud Tasks sends it; ``overrides`` replace claims (None removes one)."""
    now = int(time.time())
    overrides = {k: now + v if isinstance(v, FromNow) else v for k, v in overrides.items()}
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "112233445566778899000",
        "sub": "112233445566778899000",
        "email": SERVICE_ACCOUNT,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    token: bytes = jwt.encode(_signer(key.private_pem, kid), claims)  # type: ignore[no-untyped-call]
    return token.decode()


@functools.cache
def _signer(private_pem: bytes, kid: str) -> crypt.RSASigner:
    # Loading a private key checks it, which is slow: once per key is enough.
    return crypt.RSASigner.from_string(private_pem, key_id=kid)


def request(authorization: str | None) -> HttpRequest:
    headers = {} if authorization is None else {"Authorization": authorization}
    return HttpRequest("POST", "/_dispatch", b"{}", headers)


async def test_a_valid_token_is_accepted(verifier: OidcVerifier, google_key: Key) -> None:
    token = id_token(google_key)
    assert await verifier(request(f"Bearer {token}"))
    claims = verifier.verify(token)
    assert claims["email"] == SERVICE_ACCOUNT and claims["aud"] == AUDIENCE


async def test_the_scheme_is_case_insensitive_and_the_short_issuer_accepted(
    verifier: OidcVerifier, google_key: Key
) -> None:
    token = id_token(google_key, iss="accounts.google.com")
    assert await verifier(request(f"bearer {token}"))


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"aud": "https://elsewhere.example/refluxo"}, "audience", id="wrong-audience"),
        pytest.param(
            {"aud": AUDIENCE + "/_dispatch"}, "audience", id="audience-of-the-dispatch-url"
        ),
        pytest.param(
            {"email": "someone@demo-project.iam.gserviceaccount.com"}, "issued to", id="wrong-email"
        ),
        pytest.param({"email": None}, "issued to", id="no-email"),
        pytest.param({"email_verified": False}, "issued to", id="unverified-email"),
        pytest.param({"email_verified": None}, "issued to", id="no-email-verified"),
        pytest.param(
            {"iat": FromNow(-7200), "exp": FromNow(-3600)},
            "expired",
            id="expired",
        ),
        pytest.param(
            {"iat": FromNow(600), "exp": FromNow(4200)},
            "early|used too early",
            id="issued-in-the-future",
        ),
        pytest.param({"iss": "https://evil.example"}, "issuer", id="wrong-issuer"),
    ],
)
async def test_a_token_with_wrong_claims_is_refused(
    verifier: OidcVerifier, google_key: Key, overrides: dict[str, Any], reason: str
) -> None:
    token = id_token(google_key, **overrides)
    assert not await verifier(request(f"Bearer {token}"))
    with pytest.raises(ValueError, match=f"(?i){reason}"):
        verifier.verify(token)


async def test_a_token_signed_by_another_key_is_refused(
    verifier: OidcVerifier, impostor_key: Key
) -> None:
    token = id_token(impostor_key)  # claims the published kid
    assert not await verifier(request(f"Bearer {token}"))
    with pytest.raises(ValueError, match=r"(?i)signature"):
        verifier.verify(token)


async def test_a_tampered_token_is_refused(verifier: OidcVerifier, google_key: Key) -> None:
    header, payload, signature = id_token(google_key).split(".")
    other = id_token(google_key, email="someone@demo-project.iam.gserviceaccount.com")
    forged = ".".join([header, other.split(".")[1], signature])
    assert payload != other.split(".")[1]
    assert not await verifier(request(f"Bearer {forged}"))


async def test_a_token_with_an_unknown_key_id_is_refused(
    verifier: OidcVerifier, google_key: Key
) -> None:
    assert not await verifier(request(f"Bearer {id_token(google_key, kid='rotated-away')}"))


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("", id="empty"),
        pytest.param("Bearer", id="bearer-without-token"),
        pytest.param("Bearer ", id="bearer-and-space"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic"),
        pytest.param("Bearer not-a-jwt", id="not-a-jwt"),
    ],
)
async def test_a_request_without_a_bearer_id_token_is_refused(
    verifier: OidcVerifier, authorization: str | None
) -> None:
    assert not await verifier(request(authorization))


async def test_the_certificates_are_fetched_once_for_many_tokens(
    verifier: OidcVerifier, certs_server: CertsServer, google_key: Key, impostor_key: Key
) -> None:
    assert certs_server.hits == []  # nothing is fetched before the first token
    for _ in range(3):
        assert await verifier(request(f"Bearer {id_token(google_key)}"))
    assert not await verifier(request(f"Bearer {id_token(impostor_key)}"))
    assert verifier.verify(id_token(google_key))
    assert len(certs_server.hits) == 1


async def test_the_certificates_are_fetched_again_once_the_cache_expires(
    certs_server: CertsServer, google_key: Key
) -> None:
    verifier = OidcVerifier(
        AUDIENCE, SERVICE_ACCOUNT, certs_url=certs_server.url, cache_seconds=0.0
    )
    for _ in range(2):
        assert await verifier(request(f"Bearer {id_token(google_key)}"))
    assert len(certs_server.hits) == 2


async def test_an_unreachable_certificates_url_refuses_rather_than_raises(
    google_key: Key,
) -> None:
    verifier = OidcVerifier(AUDIENCE, SERVICE_ACCOUNT, certs_url="http://127.0.0.1:9/certs")
    assert not await verifier(request(f"Bearer {id_token(google_key)}"))


def strip_signature(token: str) -> str:
    """What Google's front end forwards after verifying a token for an IAM-protected function."""
    header, payload, _ = token.split(".")
    return f"{header}.{payload}.SIGNATURE_REMOVED_BY_GOOGLE"


async def test_a_token_whose_signature_google_removed_is_accepted_when_trusted(
    google_key: Key,
) -> None:
    trusting = OidcVerifier(
        AUDIENCE,
        SERVICE_ACCOUNT,
        certs_url="http://127.0.0.1:9/unused",
        trust_platform_verification=True,
    )
    token = strip_signature(id_token(google_key))
    assert await trusting(request(f"Bearer {token}"))
    assert trusting.verify(token, platform_verified=True)["email"] == SERVICE_ACCOUNT


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"aud": "https://elsewhere.example"}, "audience", id="wrong-audience"),
        pytest.param({"email": "someone@else.example"}, "issued to", id="wrong-email"),
        pytest.param({"exp": FromNow(-3600)}, "expired", id="expired"),
        pytest.param({"iss": "https://evil.example"}, "issuer", id="wrong-issuer"),
    ],
)
async def test_claims_of_a_stripped_token_are_still_checked(
    google_key: Key, overrides: dict[str, Any], reason: str
) -> None:
    trusting = OidcVerifier(
        AUDIENCE,
        SERVICE_ACCOUNT,
        certs_url="http://127.0.0.1:9/unused",
        trust_platform_verification=True,
    )
    token = strip_signature(id_token(google_key, **overrides))
    assert not await trusting(request(f"Bearer {token}"))
    with pytest.raises(ValueError, match=f"(?i){reason}"):
        trusting.verify(token, platform_verified=True)


async def test_a_stripped_token_is_refused_where_the_signature_is_checked(
    verifier: OidcVerifier, google_key: Key
) -> None:
    token = strip_signature(id_token(google_key))
    assert not await verifier(request(f"Bearer {token}"))
    with pytest.raises(ValueError, match="signature was removed"):
        verifier.verify(token)


# --- the header the platform verified ---------------------------------------------------------


@pytest.fixture
def trusting(certs_server: CertsServer) -> OidcVerifier:
    return OidcVerifier(
        AUDIENCE, SERVICE_ACCOUNT, certs_url=certs_server.url, trust_platform_verification=True
    )


def forged_queue_token() -> str:
    """A token naming the queue's account, never signed: what any invoker can type."""
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"x"}').rstrip(b"=").decode()
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "email": SERVICE_ACCOUNT,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
    }
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.SIGNATURE_REMOVED_BY_GOOGLE"


def invoker_token(google_key: Key) -> str:
    """An invoker's own ID token, as the front end forwards it after verifying it."""
    return strip_signature(id_token(google_key, email="someone@example.com"))


async def test_a_forged_stripped_token_next_to_x_serverless_authorization_is_refused(
    trusting: OidcVerifier, google_key: Key
) -> None:
    # Cloud Run verified X-Serverless-Authorization (the invoker's own token) and passed
    # Authorization through unverified: its "removed" signature was never there.
    forged = HttpRequest(
        "POST",
        "/_dispatch",
        b"{}",
        {
            "X-Serverless-Authorization": f"Bearer {invoker_token(google_key)}",
            "Authorization": f"Bearer {forged_queue_token()}",
        },
    )
    assert not await trusting(forged)


async def test_the_forged_dispatch_request_runs_no_step(
    trusting: OidcVerifier, google_key: Key
) -> None:
    from refluxo.core import Dispatcher, MemoryScheduler, MemoryStateStore
    from refluxo.core.http import HttpApi
    from refluxo.demo import workflows

    store = MemoryStateStore()
    api = HttpApi(Dispatcher(workflows(), store, MemoryScheduler()), dispatch_auth=trusting)
    await api.dispatcher.start("demo", run_id="victim")
    body = json.dumps({"runId": "victim", "version": 0}).encode()
    headers = {
        "X-Serverless-Authorization": f"Bearer {invoker_token(google_key)}",
        "Authorization": f"Bearer {forged_queue_token()}",
    }
    response = await api.handle(HttpRequest("POST", "/_dispatch", body, headers))
    assert response.status == 401
    assert (await store.load("victim")).version == 0


async def test_the_queue_token_the_platform_verified_is_accepted(
    trusting: OidcVerifier, google_key: Key
) -> None:
    stripped = strip_signature(id_token(google_key))
    # Cloud Tasks' token alone, in Authorization: the header the front end verified.
    assert await trusting(request(f"Bearer {stripped}"))
    # A client that authenticates itself in X-Serverless-Authorization: the stripped queue
    # token there is what the front end verified.
    both = HttpRequest(
        "POST", "/_dispatch", b"{}", {"X-Serverless-Authorization": f"Bearer {stripped}"}
    )
    assert await trusting(both)


async def test_a_signed_queue_token_in_authorization_is_verified_next_to_the_platform_header(
    trusting: OidcVerifier, google_key: Key, impostor_key: Key
) -> None:
    def with_invoker(token: str) -> HttpRequest:
        headers = {
            "X-Serverless-Authorization": f"Bearer {invoker_token(google_key)}",
            "Authorization": f"Bearer {token}",
        }
        return HttpRequest("POST", "/_dispatch", b"{}", headers)

    assert await trusting(with_invoker(id_token(google_key)))
    assert not await trusting(with_invoker(id_token(impostor_key)))


async def test_a_non_ascii_shared_secret_header_is_refused_not_raised() -> None:
    from refluxo.gcp.auth import shared_secret

    check = shared_secret("s3cret")
    headers = {"X-Refluxo-Dispatch-Token": "s\u00e9cret"}
    assert await check(HttpRequest("POST", "/_dispatch", b"{}", headers)) is False
    ok = {"X-Refluxo-Dispatch-Token": "s3cret"}
    assert await check(HttpRequest("POST", "/_dispatch", b"{}", ok)) is True
