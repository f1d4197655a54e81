"""Latency, throughput and scale benchmarks: ``livehuman bench SUITE`` (see ``benchmarks.cli``).

Every suite writes a JSON result (environment, config, per-sample records, percentiles), a PNG
plot and a Markdown summary that prints DESIGN.md's latency budget beside the measured figures.
"""
