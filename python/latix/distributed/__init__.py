"""Sharded collections on Ray: one latix :class:`~latix.collection.Collection` per shard, each
served by a Ray actor, behind one handle with the Collection's API (``latix[ray]`` extra).

Layout of a sharded collection directory::

    OUT/sharded.json     the shard manifest: format version, number of shards, routing, model,
                         dimension, checksum (written temp + fsync + rename; "creating" until
                         every shard exists, then "ready")
    OUT/shard-0000/      a normal latix collection (``latix.Collection.open`` opens it alone)
    OUT/shard-0001/      ...

**Routing.** A record lives in shard ``shard_of(id, n_shards)``: the first 8 bytes of the
BLAKE2b digest (``digest_size=8``) of the id's UTF-8 bytes, read as a little-endian unsigned
integer, modulo the number of shards. It depends on nothing but the id's bytes, so it is the
same in every process, on every machine and in every Python version (Python's ``hash()`` is
salted per process and is never used). Adds, upserts, deletes by id and gets go to the owning
shard only; the shard count is fixed when the collection is built.

**Search (fan-out).** The query is encoded once, by the handle (the driver), with the
collections' model; its vectors go to every shard actor in parallel, each shard answers with
its own top list from its own Collection, and the handle merges. The request travels through a
Ray compiled graph (``ray.dag``: one input read by every shard actor's ``dispatch``, compiled
when the handle opens; shared-memory channels instead of one Ray task per shard; each request
and each answer crosses as one ``bytes`` object pickled by latix, which costs less than Ray's
own serialisation of the numpy arrays inside them; a 1-shard answer is passed on unmerged);
when an actor dies the graph is dropped, the call is made again as plain actor calls (with the
retries below), and the graph is compiled again after a call every shard answered
(``ShardedCollection.open(compiled=False)``: plain calls only):

* ``mode="late"``: every shard returns its top ``k`` records by MaxSim; the global top ``k`` is
  contained in the union of the shards' top ``k`` lists, so the merge is exact: for exact
  (uncompressed) shards the hits and scores are those of one Collection holding all records
  (tests/test_distributed.py checks ids and scores). Compressed shards search their own codes;
  by default :func:`build` trains one codec on a seeded sample of the whole corpus and creates
  every shard with it (``codec="shared"``; ``"per-shard"``: each shard trains its own on its
  first ``train_min_tokens`` tokens), see :mod:`latix.distributed.builder`.
* ``mode="keyword"``: each shard scores BM25 with its own FTS5 statistics (document count,
  average length, document frequencies), as a search engine's default "query then fetch" does;
  the merge is exact over those scores. With hash routing each shard is a uniform random sample
  of the corpus, so shard statistics estimate the global ones; the scores are not bit-identical
  to one collection's (global statistics would need a second round trip and BM25 computed
  outside FTS5, which latix does not do).
* ``mode="hybrid"``: fusion is **not** done per shard (min-max normalisation over one shard's
  list would use that shard's extremes, and reciprocal ranks within one shard are not global
  ranks). Each shard returns its late and its keyword top ``depth``
  (:data:`~latix.collection.HYBRID_DEFAULTS`) lists unfused; the handle merges each list across
  shards (the late list exactly), then fuses the two merged lists with the Collection's own
  fusion (:func:`latix.collection._fuse`), and fetches texts and metadata of the final hits from
  their shards. With one shard this is exactly Collection's hybrid search.

**Faults.** Shard actors are restartable (``max_restarts``): a restarted actor opens its shard
from disk again (the last committed state). A search whose shard call fails because the actor
died is sent again, up to ``retries`` times within ``retry_timeout`` seconds, to the restarted
actor; if a shard still cannot answer, the search raises :class:`ShardUnavailableError`, or,
with ``allow_partial=True``, returns the merge of the shards that answered with
``partial=True`` and the missing shard numbers in ``missing_shards`` (:class:`ShardedHits`,
:class:`ShardedBatchResults`). A short list is never returned silently.

**Writes.** Each shard's part of a write is one commit of that shard (durable when the call
returns); a write spanning shards is not atomic across them: if a shard fails, the exception
(:class:`ShardWriteError`) says which shards committed their part. Metadata field types are
checked against the union of every shard's fields before anything is written, and a new field is
declared on every shard, so that a filter means the same thing on all of them.

**Build.** :func:`build` creates the shards and streams the corpus into them: records are routed,
grouped per shard in windows sorted by text length (so that each encoder batch pads little),
and each batch is sent to its shard's actor, which encodes it with its own encoder session (one
per actor, ``encoder_threads`` threads) and adds it as one commit. A batch whose actor died is
sent again to the restarted actor, which first drops the records its shard already holds (a
batch that committed before the kill is not added twice); a build that stopped (even killed) is
finished by running it again, which skips every id the shards hold. With
``build(encoding="ray-data")`` the encoding is a Ray Data pipeline instead (``map_batches`` over
an actor pool, one encoder session per worker; a killed worker is restarted and its batch sent
again), whose rows (passages' vectors with their spans, :class:`latix.PassageEncoder`) the shard
actors write as above: the same rows a text add stores.

**Threads and processes.** A handle may be shared by threads (Ray's actor handles are
thread-safe; writes from one handle are serialised by a lock). Any number of handles, in any
processes of the Ray cluster, may be opened on one directory; each starts its own shard actors
(each shard still has one writer at a time: the index's lock, see latix.Collection). The shard
directories must be reachable at the same path from the nodes the actors run on (a local disk
for a one-node cluster, a shared filesystem otherwise). A handle is not fork-safe (Ray's driver
state is not): in a forked child, call ``ray.init`` and open a new handle.
"""

from __future__ import annotations

from latix.distributed.builder import build
from latix.distributed.handle import ShardedCollection
from latix.distributed.manifest import MANIFEST
from latix.distributed.results import (
    BuildReport,
    ShardedBatchResults,
    ShardedHits,
    ShardUnavailableError,
    ShardWriteError,
)
from latix.distributed.routing import ROUTING, shard_of

__all__ = [
    "ShardedCollection",
    "ShardedHits",
    "ShardedBatchResults",
    "BuildReport",
    "ShardUnavailableError",
    "ShardWriteError",
    "build",
    "shard_of",
    "MANIFEST",
    "ROUTING",
]
