"""`rillet bench`: a load generator for any Rillet server, a client of the contract only (rillet.v1 frames)."""
