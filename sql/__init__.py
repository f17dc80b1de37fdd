"""DuckDB SQL of billing_ai: core mappings per platform and marts (shipped in the wheel as ``billing_ai.sql``)."""
