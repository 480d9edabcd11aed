"""Reading and writing tables: input readers, sharded parquet folders, BEIR collections."""
