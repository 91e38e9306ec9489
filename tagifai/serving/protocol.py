"""MLflow's scoring protocol, pure: request bodies parsed, answers and errors encoded as its scoring server does.

MLflow's own parsing helpers and the model's input schema do the work, so `tagifai serve` answers
what `mlflow models serve` answers, byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO, StringIO
from typing import Any

from tagifai.contract.sources import redact

# JSON keys of MLflow's scoring protocol (mlflow.pyfunc.scoring_server.SUPPORTED_FORMATS).
JSON_FORMATS = ("dataframe_records", "dataframe_split", "inputs", "instances")
CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_CSV = "text/csv"
CONTENT_TYPE_PARQUET = "application/vnd.apache.parquet"
# The header of every /invocations answer that names the version which scored it.
VERSION_HEADER = "Tagifai-Model-Version"


class RequestError(Exception):
    """A request the server refuses: HTTP status, MLflow error code, a one-line message; `close` the connection."""

    def __init__(self, status: int, message: str, error_code: str = "BAD_REQUEST", close: bool = False) -> None:
        """Keep the status, the error code and whether the connection must close next to the message."""
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.close = close


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A short, single-line reason for `exc`, without the data MLflow pastes into its messages.

    MLflow's schema errors read "Failed to enforce schema of data '<the whole frame>' ... Error: <reason>":
    keep the reason. Credentials in URLs are masked.
    """
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if "Error: " in text:
        text = text.rsplit("Error: ", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    text = redact(lines[0] if lines else type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def media_type(header: str | None) -> str:
    """The media type of a Content-Type header, checked as MLflow's scoring server checks it.

    Raises:
        RequestError: 415 for a missing header, a charset other than UTF-8 or unknown parameters.
    """
    if not header:
        raise RequestError(415, f"missing Content-Type: send {CONTENT_TYPE_JSON} or {CONTENT_TYPE_CSV}")
    mime, *pairs = [part.strip() for part in header.split(";")]
    parameters = {key.strip().lower(): value.strip().strip('"') for key, _, value in (p.partition("=") for p in pairs)}
    if parameters.get("charset", "utf-8").lower() != "utf-8":
        raise RequestError(415, "the scoring server only supports UTF-8")
    if unknown := sorted(set(parameters) - {"charset"}):
        raise RequestError(415, f"unrecognized Content-Type parameters: {', '.join(unknown)}")
    return mime.lower()


@dataclass(frozen=True)
class Payload:
    """A parsed request: the model input, its params, and whether it may share a batch."""

    data: Any
    params: dict[str, Any] | None = None
    batchable: bool = True

    @property
    def rows(self) -> int:
        """Rows in the input: a frame's or a list's length, a dict of columns' longest column, else 1."""
        if isinstance(self.data, dict):
            return max((Payload(column).rows for column in self.data.values()), default=1)
        return 1 if isinstance(self.data, str | bytes) or not hasattr(self.data, "__len__") else len(self.data)


def parse_json(body: bytes, schema: Any) -> Payload:
    """Parse a JSON scoring request the way MLflow's scoring server does (same helpers, same schema casts).

    `dataframe_records` / `dataframe_split` become frames that may be batched; `inputs` / `instances`
    are handed to the model exactly as MLflow hands them (a list or dict), so they are scored alone.

    Raises:
        RequestError: 400 with a one-line reason.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.utils.proto_json_utils import dataframe_from_parsed_json, parse_tf_serving_input

    try:
        decoded = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {one_line(exc)}") from None
    if not isinstance(decoded, dict):
        raise RequestError(400, f"the body must be a JSON object with one of {', '.join(JSON_FORMATS)}")
    keys = [key for key in JSON_FORMATS if key in decoded]
    if len(keys) != 1:
        got = ", ".join(map(str, decoded)) or "none"
        raise RequestError(400, f"the body must have exactly one of {', '.join(JSON_FORMATS)} (got keys: {got})")
    key, params = keys[0], decoded.get("params")
    try:
        if key in ("inputs", "instances"):
            return Payload(parse_tf_serving_input({key: decoded[key]}, schema=schema), params, batchable=False)
        frame = dataframe_from_parsed_json(decoded[key], pandas_orient=key.removeprefix("dataframe_"), schema=schema)
    except MlflowException as exc:
        raise RequestError(400, f"{key}: {one_line(exc)}") from None
    except Exception as exc:  # pandas refusing the values
        raise RequestError(400, f"{key} is not a valid frame: {one_line(exc)}") from None
    return Payload(frame, params)


def parse_body(body: bytes, mime: str, schema: Any, csv_dtypes: dict[str, Any] | None, max_rows: int) -> Payload:
    """Parse a request body of media type `mime` into a `Payload` of at most `max_rows` rows.

    A Parquet body's row count is read from its footer before any column is decoded (it compresses:
    a small body may hold millions of rows); JSON and CSV are counted once parsed (their size is the
    body's).

    Raises:
        RequestError: 400 for a body that does not parse, 413 for too many rows, 415 for an unsupported
            media type.
    """
    import pandas as pd

    if mime == CONTENT_TYPE_JSON:
        payload = parse_json(body, schema)
    elif mime == CONTENT_TYPE_CSV:
        try:
            payload = Payload(pd.read_csv(StringIO(body.decode("utf-8")), dtype=csv_dtypes))
        except Exception as exc:
            raise RequestError(400, f"the body is not a valid CSV frame: {one_line(exc)}") from None
    elif mime == CONTENT_TYPE_PARQUET:
        import pyarrow.parquet as pq

        try:
            check_rows(pq.ParquetFile(BytesIO(body)).metadata.num_rows, max_rows)
            payload = Payload(pd.read_parquet(BytesIO(body)))
        except RequestError:
            raise
        except Exception as exc:
            raise RequestError(400, f"the body is not a valid Parquet frame: {one_line(exc)}") from None
    else:
        supported = ", ".join((CONTENT_TYPE_JSON, CONTENT_TYPE_CSV, CONTENT_TYPE_PARQUET))
        raise RequestError(415, f"unsupported Content-Type {mime!r}: send one of {supported}")
    check_rows(payload.rows, max_rows)
    return payload


def check_rows(rows: int, max_rows: int) -> None:
    """Refuse (413) a request of more than `max_rows` rows."""
    if rows > max_rows:
        raise RequestError(413, f"the body holds {rows} rows; the limit is {max_rows} rows per request")


def jsonable(output: Any) -> Any:
    """Model output as MLflow's scoring server turns it into JSON (records orient for frames)."""
    import numpy as np
    import pandas as pd

    if isinstance(output, np.ndarray):
        return output.tolist()
    if isinstance(output, pd.DataFrame):
        return output.to_dict(orient="records")
    if isinstance(output, pd.Series):
        return pd.DataFrame(output).to_dict(orient="records")
    return output


def predictions_json(predictions: Any) -> bytes:
    """The body of a successful /invocations answer, encoded exactly as MLflow encodes it."""
    from mlflow.utils.proto_json_utils import NumpyEncoder

    return json.dumps({"predictions": predictions}, cls=NumpyEncoder).encode()


def error_json(message: str, error_code: str = "BAD_REQUEST") -> bytes:
    """MLflow's error body."""
    return json.dumps({"error_code": error_code, "message": message}).encode()
