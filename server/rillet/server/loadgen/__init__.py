"""`rillet bench`: a load generator for any Rillet server, over the generated rillet.v1 stubs only (a client tool)."""
