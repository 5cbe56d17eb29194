"""Prefect tasks: units of work that adapt configs to calls into saeuron/ and storage/."""
