"""Enrichment at ingest: the client's address (`context.ip`), its location, the parsed user
agent and a bot flag, added to every event (docs/enrichment.md). `Enricher` is the entry point;
one module per concern: addresses, geo, user_agents, bots."""

from shared.enrichment.enricher import Enricher

__all__ = ["Enricher"]
