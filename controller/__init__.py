"""edgefleet controller."""
