"""Enrichment: pure ``pyarrow.RecordBatch -> pyarrow.RecordBatch`` steps, in a fixed order.

No engine imports here: the local engine calls the steps directly, the Spark engine will call
the same functions through ``mapInArrow``.
"""
