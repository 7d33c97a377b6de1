"""What the relay's server and source share: live sources and lineages, per blob."""

from __future__ import annotations

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
    # Children being served now, per blob: the admission rule counts them.
    children: dict[Digest, int] = field(default_factory=dict)
    # Most children ever served at once for one blob (the admission rule's witness).
    peak_children: int = 0

    def lineage(self, digest: Digest) -> tuple[str, ...]:
        feed = self.feeds.get(digest)
        return feed.lineage if feed is not None else (self.agent_id,)

    def attach(self, digest: Digest, parent: str, parent_lineage: tuple[str, ...]) -> None:
        self.feeds[digest] = Feed(parent, (*parent_lineage, self.agent_id))

    def detach(self, digest: Digest) -> None:
        self.feeds.pop(digest, None)

    def add_child(self, digest: Digest) -> None:
        n = self.children[digest] = self.children.get(digest, 0) + 1
        self.peak_children = max(self.peak_children, n)

    def remove_child(self, digest: Digest) -> None:
        left = self.children.get(digest, 0) - 1
        if left > 0:
            self.children[digest] = left
        else:
            self.children.pop(digest, None)
