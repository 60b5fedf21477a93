"""The archive: where an event goes, how it is encoded, where it is stored, and how it is read.

Split the way Kafka Connect's S3 sink splits it, one module per concern:
- `partitions`: an event goes under `dt=YYYY-MM-DD/hour=HH/` of its `receivedAt`; the one
  owner of that layout and of hour ranges;
- `formats/`: how staged events become bytes, one module each (`ndjson`: gzip NDJSON;
  `parquet`: Parquet, zstd), one small interface, chosen by `ARCHIVE_FORMAT`;
- `columns`: the archive as a table, the columns every reader sees whatever the format;
- `naming`: object names derived from the stream entry IDs an object holds;
- `storage`: `ObjectStore`, the one adapter over an S3-compatible bucket (get, ranged get,
  put, copy, delete, list, retries);
- `buffer`: `Buffer` stages events between reads and a flush; `flush_due` says when;
- `reading`: list the objects of a time range, read one as a table.

And the jobs over the archive, which read and write through those: `compaction/` (closed hours
merged into deduplicated Parquet), `query` (SQL over a time range) and `replay` (archived
events back into a stream). The stream side (`shared.stream`, `shards`, `codec`, `events`)
never imports the archive side.
"""

from shared.archive.buffer import Buffer, flush_due, size_hint_reached
from shared.archive.formats import Format
from shared.archive.formats import named as format_named
from shared.archive.formats.ndjson import SUFFIX as OBJECT_SUFFIX
from shared.archive.formats.ndjson import compress, encode_lines
from shared.archive.naming import ERRORS_PREFIX, error_object, object_key
from shared.archive.partitions import UnarchivableEvent, partition_path
from shared.archive.storage import ObjectStore

__all__ = [
    "ERRORS_PREFIX",
    "OBJECT_SUFFIX",
    "Buffer",
    "Format",
    "ObjectStore",
    "UnarchivableEvent",
    "compress",
    "encode_lines",
    "error_object",
    "flush_due",
    "format_named",
    "object_key",
    "partition_path",
    "size_hint_reached",
]
