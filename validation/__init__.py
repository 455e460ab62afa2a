"""Data contracts (Great Expectations suites) and the quarantine gate for raw tables."""
