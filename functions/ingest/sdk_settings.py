"""The settings documents SDKs load before they send anything, served from our own host.

- analytics.js (`@segment/analytics-next`) fetches `{cdnURL}/v1/projects/{writeKey}/settings`
  at every page load and sends its events wherever `integrations["Segment.io"].apiHost` says
  (`host[:port]/v1`, no scheme; the scheme is `protocol`). Serving it here lets a page work
  with nothing changed but `cdnURL`: events come back to the host that served the settings.
  The document turns off all else analytics.js would load from Segment's CDN or send to Segment:
  any integration but `Segment.io` makes it download destination code, and its own usage
  metrics go to Segment unless `metrics.sampleRate` is 0. Where the events go comes from
  PUBLIC_URL (`api_location`); a document built from a request's `Host` instead must reach no
  one but the browser that sent it (functions/ingest/app.py marks it private).
- RudderStack's SDKs fetch `{configUrl}/sourceConfig` for their destinations; here there are
  none, so they send every event to the data plane URL they were given (this host).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


def analytics_js_settings(write_key: str, api_host: str, protocol: str) -> dict[str, Any]:
    """The document for one key; `api_host` is `host[:port]/v1`, as analytics.js wants it."""
    return {
        "integrations": {
            "Segment.io": {"apiKey": write_key, "apiHost": api_host, "protocol": protocol}
        },
        "plan": {},
        "metrics": {"sampleRate": 0},
        "remotePlugins": [],
        "enabledMiddleware": {},
        "middlewareSettings": {},
        "legacyVideoPluginsEnabled": False,
    }


def api_location(public_url: str) -> tuple[str, str]:
    """analytics.js's `apiHost` and `protocol` for the URL browsers reach this service at,
    path prefix kept (an API Gateway stage): `https://events.example.com/Prod` gives
    `("events.example.com/Prod/v1", "https")`; analytics.js posts to `https://` + apiHost +
    `/t`, `/b`, ..."""
    parts = urlsplit(public_url)
    return f"{parts.netloc}{parts.path.rstrip('/')}/v1", parts.scheme


def rudderstack_source_config() -> dict[str, Any]:
    """An enabled source with no device-mode destinations."""
    return {
        "isHosted": False,
        "source": {
            "id": "event-ingest",
            "name": "event-ingest",
            "enabled": True,
            "config": {},
            "destinations": [],
        },
    }
