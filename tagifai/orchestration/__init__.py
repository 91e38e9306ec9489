"""Airflow-only helpers for the DAGs in `dags/`: runners, Assets, and what people are told (`notify`).

Imports Airflow, the standard library and `tagifai.contract`; never the rest of tagifai. The tagifai
venv has no Airflow: only the DAGs and their tests import this.
"""
