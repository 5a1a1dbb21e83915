"""Training data: clip records (one person in one clip), synthetic people, real video ingest, token shards."""
