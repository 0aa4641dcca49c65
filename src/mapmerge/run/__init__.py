"""The run machinery: the config (schema, loading, checks before any job), code fingerprints, logs and locks."""
