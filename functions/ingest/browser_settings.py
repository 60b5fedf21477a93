"""The settings document analytics.js (`@segment/analytics-next`) loads before it sends anything.

analytics.js fetches `{cdnURL}/v1/projects/{writeKey}/settings` at every page load and sends its
events wherever `integrations["Segment.io"].apiHost` says. Serving the document from this
service lets a page work with nothing changed but `cdnURL`: events come back to the host that
served the settings. The document turns off everything else analytics.js would load from
Segment's CDN or send to Segment (device-mode destinations, remote plugins, middleware, the
legacy video plugins, its own usage metrics).
"""

from __future__ import annotations

from typing import Any


def analytics_js_settings(write_key: str, api_host: str, protocol: str) -> dict[str, Any]:
    """The document for one key; `api_host` is `host[:port]/v1`, as analytics.js wants it."""
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {"track": {"__default": {"enabled": True, "integrations": {}}}},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
        "edgeFunction": {},
        # analytics.js reports its own counters to Segment (1 in 100 page loads by default);
        # they are not events, and Segment is not who we are.
        "metrics": {"sampleRate": 0},
    }
