"""What the `tagifai` commands and the DAGs share: names, exit codes, the settings, the source policy.

The standard library, and pydantic for the settings' schema (Airflow requires pydantic itself):
Airflow imports this (and `tagifai.orchestration`) without tagifai's dependencies. Everything else
in tagifai may import it; it imports nothing else of tagifai.
"""
