"""The pure core: data, validation, training, evaluation, reuse keys and model cards.

DataFrames, arrays and dicts in and out; no MLflow, no network, no environment. Imports
`tagifai.contract` and `tagifai.model` only.
"""
