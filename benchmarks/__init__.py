"""Benchmarks and paper reproductions; each writes its results to results/ with its command."""
