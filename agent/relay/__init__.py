"""Relay: scheduled, pipelined peer transfers of whole blobs over HTTP.

Each agent fetching a blob streams it from exactly one *parent* (an agent that holds the blob,
the agent fetching it from the upstream, or another follower that already has a source) and
forwards the bytes to at most ``max_children`` *children* as they arrive, from the same
partial file its own clients read. With one child per parent the followers of a blob form
chains: every link carries the blob once at full speed, so N followers of one holder finish
about S/B after it (plus one small buffer per hop) instead of splitting the holder's upload N
ways. What is cached is what is served: no second copy on disk.

The parts:

* ``agent.relay.server``: the peer port. Serves cached blobs and downloads in flight,
  admits a child only when it has a source itself and a free child slot (so parents never
  wait on their own descendants), and holds back a blob's last byte until it verified.
* ``agent.relay.source``: a ``BlobSource`` that follows the tracker's plan (fetch upstream
  with the region's lease, or follow peers), chooses and replaces parents, and gives up to the
  upstream when no peer delivers.
* ``agent.relay.state``: what the two share: which blobs this agent currently has a live
  source for, and through which ancestors.

Trust: a parent is untrusted. The blob's size comes from the upstream (the fetch job), never
from a peer; the fetcher checks the digest before anything is cached, and every node holds
back the last byte until it verified, so no client and no child ever completes a wrong blob.
"""
