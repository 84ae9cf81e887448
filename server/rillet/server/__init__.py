"""The Rillet server: transport → session → scheduler → engine, each layer importing only downward."""
