"""Private Network Access: Chrome asks a server on a private address (a developer's machine, an
office network) before a page on a more public one may post to it. Allowing every origin lets
any site a visitor opens reach a service inside the visitor's network through the browser;
only the origins PRIVATE_NETWORK_ORIGINS names (or `*`, on purpose) are allowed."""

from __future__ import annotations

import dataclasses

import pytest

from functions.ingest.app import create_app

ALLOWED = "https://app.example.com"


def preflight(client, origin: str, path: str = "/v1/t"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Private-Network": "true",
        },
    )


@pytest.mark.parametrize("path", ["/v1/t", "/v1/projects/wk/settings", "/beacon/v1/batch"])
def test_only_listed_origins_may_cross_into_a_private_network(settings, path) -> None:
    by_default = create_app(settings).test_client()
    listed = dataclasses.replace(settings, private_network_origins=(ALLOWED,))
    client = create_app(listed).test_client()
    for refused in (
        preflight(by_default, "https://evil.example", path),
        preflight(by_default, ALLOWED, path),  # none is allowed by default
        preflight(client, "https://evil.example", path),
        preflight(client, "https://app.example.com.evil.example", path),
        preflight(client, "http://app.example.com", path),  # another scheme, another origin
    ):
        assert refused.status_code == 204  # the CORS preflight itself is still answered
        assert "Access-Control-Allow-Private-Network" not in refused.headers
    allowed = preflight(client, "HTTPS://App.Example.com", path)  # origins are case-blind
    assert allowed.headers["Access-Control-Allow-Private-Network"] == "true"
    assert allowed.headers["Vary"] == "Origin"  # a cache must not answer one origin for another

    anyone = create_app(dataclasses.replace(settings, private_network_origins=("*",)))
    answer = preflight(anyone.test_client(), "https://evil.example", path)
    assert answer.headers["Access-Control-Allow-Private-Network"] == "true"
