"""Airflow-only helpers for the DAGs in `dags/`: where a step runs (`runners`) and the Assets (`assets`).

Imports Airflow, the standard library and `tagifai.contract`; never the rest of tagifai. The tagifai
venv has no Airflow: only the DAGs and their tests import this.
"""
