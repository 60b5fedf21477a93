"""Privacy on the archive side: the regulations kept in the bucket (`store`), the copy of what
is in force that Redis holds for ingest and the consumer, and the deletions carried out over
every place events are stored. The regulation model itself is `shared.regulations`."""
