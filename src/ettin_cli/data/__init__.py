"""Building training pairs: mining candidates, selecting per query, mixing subsets."""
