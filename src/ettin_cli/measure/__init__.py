"""Measuring models: retrieval, reranking metrics, evaluation, throughput benchmarks, charts."""
