"""LiveOS tools: dm-snapshot COW stores, minimized install deltas, persistent overlays, sparse images."""
