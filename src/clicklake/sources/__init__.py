"""Sources of raw lines: the spool, NDJSON files, Kafka, and the demo generator.

A source yields :class:`~clicklake.sources.base.Chunk` objects: whole lines from one stream (a
spool segment, a file, a Kafka partition) with the byte offset of the first line, so that every
row the pipeline produces knows its exact source position.
"""
