"""Everything that talks to PyIceberg: the catalog, table specs, checkpointed commits."""
