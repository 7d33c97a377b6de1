"""What the relay's server and source share: live sources and lineages, per blob."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from agent.oci import Digest


@dataclass
class Feed:
    """This agent's live source for one blob while it follows peers.

    ``lineage`` lists the agent ids from the root of the chain down to this agent: a child
    whose id is in it would be its own ancestor, so it is refused.
    """

    parent: str
    lineage: tuple[str, ...]


@dataclass
class RelayState:
    agent_id: str
    feeds: dict[Digest, Feed] = field(default_factory=dict)
    # Children being served now, per blob, by agent id: the admission rule counts them and
    # a refused asker is told who they are (the free end of the chain is below them).
    children: dict[Digest, list[str]] = field(default_factory=dict)
    # Most children ever served at once for one blob (the admission rule's witness).
    peak_children: int = 0
    _large: set[Digest] = field(default_factory=set)

    def lineage(self, digest: Digest) -> tuple[str, ...]:
        feed = self.feeds.get(digest)
        return feed.lineage if feed is not None else (self.agent_id,)

    def attach(self, digest: Digest, parent: str, parent_lineage: tuple[str, ...]) -> None:
        self.feeds[digest] = Feed(parent, (*parent_lineage, self.agent_id))

    def detach(self, digest: Digest) -> None:
        self.feeds.pop(digest, None)

    def child_count(self, digest: Digest) -> int:
        return len(self.children.get(digest, ()))

    def add_child(self, digest: Digest, child: str, *, large: bool = True) -> None:
        kids = self.children.setdefault(digest, [])
        kids.append(child)
        if large:
            self._large.add(digest)
        self.peak_children = max(self.peak_children, len(kids))

    def large_children(self) -> int:
        """Children being fed a large blob, whichever: they share this agent's upload."""
        return sum(len(self.children.get(d, ())) for d in self._large)

    def remove_child(self, digest: Digest, child: str) -> None:
        kids = self.children.get(digest)
        if kids is None:
            return
        with contextlib.suppress(ValueError):
            kids.remove(child)
        if not kids:
            del self.children[digest]
            self._large.discard(digest)
