"""The benchmark suites; each module has ``run(options) -> result`` and ``SUMMARY_KEYS``."""
