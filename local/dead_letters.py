"""Inspect and re-drive dead letters: `python -m local.dead_letters list|redrive [ID ...]`.

Dead letters live in the stream `{STREAM_KEY}:dead` (one entry each: `original_id`, `reason`
and the original fields as `field:<name>`) and as JSON under `errors/` in the bucket. Re-driving
puts the original entry back on the stream, where the consumer tries it again: do it once the
cause is fixed (a consumer that understands a new format version, say).
"""

from __future__ import annotations

import argparse
import sys

from shared import stream
from shared.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["list", "redrive"])
    parser.add_argument("ids", nargs="*", help="dead-letter IDs to re-drive (default: all)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    producer = stream.EventStream.from_settings(settings)
    dead = producer.client.xrange(stream.dead_letter_key(settings.stream_key))
    if args.command == "list":
        for dead_id, record in dead:
            reason = record[b"reason"].decode(errors="replace")
            print(f"{dead_id.decode()}  original {record[b'original_id'].decode()}  {reason}")
        print(f"{len(dead)} dead letters", file=sys.stderr)
        return 0
    wanted = [i.encode() for i in args.ids] or [dead_id for dead_id, _ in dead]
    for dead_id in wanted:
        new_id = stream.redrive(producer, dead_id)
        print(f"{dead_id.decode()} -> {new_id.decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
