"""Peer-to-peer segment transfer: the PeerEngine contract and its libtorrent implementation."""
