"""edgefleet manifests."""
