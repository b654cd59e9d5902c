"""The canonical event: schemas, the spool envelope, the Segment decoder and validation."""
