"""MLflow's scoring protocol: bodies parsed by `mlflow.pyfunc.scoring_server`'s own helpers, within a row bound.

So `tagifai serve` answers what `mlflow models serve` answers; MLflow's errors are passed on with their
status and error code, their reason cut to one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO, StringIO
from typing import Any

import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from mlflow.pyfunc.scoring_server import CONTENT_TYPE_CSV, CONTENT_TYPE_JSON, CONTENT_TYPE_PARQUET, CONTENT_TYPES
from pyarrow import ArrowException

from tagifai.contract.sources import redact


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

    MLflow's errors read "<what failed, with the data> Error: <reason>" (the body of bad JSON follows
    as "Input: …"): keep the reason, not MLflow 2.0's note on its protocol. Credentials in URLs are masked.
    """
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = text.partition("\nInput: ")[0].removesuffix(f" {scoring_server.SCORING_PROTOCOL_CHANGE_INFO}")
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


def parse_body(body: bytes, content_type: str | None, schema: Any, max_rows: int) -> Payload:
    """Parse a request body into a `Payload` of at most `max_rows` rows with MLflow's own parsers.

    Frames (`dataframe_records`, `dataframe_split`, CSV, Parquet) may share a batch; `inputs` / `instances`
    are scored alone. A Parquet body's rows are counted from its footer before it is decoded (it compresses).

    Raises:
        RequestError: MLflow's status (400) for a body it refuses, 413 past `max_rows`, 415 from `media_type`.
    """
    mime = media_type(content_type)
    try:
        if mime == CONTENT_TYPE_JSON:
            data, params = scoring_server._split_data_and_params(body)
            batchable = scoring_server.INPUTS not in data and scoring_server.INSTANCES not in data
            payload = Payload(scoring_server.infer_and_parse_data(data, schema), params, batchable)
        elif mime == CONTENT_TYPE_CSV:
            payload = Payload(scoring_server.parse_csv_input(BytesIO(body), schema))
        elif mime == CONTENT_TYPE_PARQUET:
            try:
                check_rows(pq.read_metadata(BytesIO(body)).num_rows, max_rows)
            except ArrowException as exc:
                raise RequestError(400, f"invalid {mime} body: {one_line(exc)}") from None
            payload = Payload(scoring_server.parse_parquet_input(BytesIO(body)))
        else:
            raise RequestError(415, f"unsupported Content-Type {mime!r}: send one of {', '.join(CONTENT_TYPES)}")
    except MlflowException as exc:
        reason = f"invalid {mime} body: {one_line(exc)}"
        raise RequestError(exc.get_http_status_code(), reason, exc.error_code) from None
    check_rows(payload.rows, max_rows)
    return payload


def check_rows(rows: int, max_rows: int) -> None:
    """Refuse (413) a request of more than `max_rows` rows."""
    if rows > max_rows:
        raise RequestError(413, f"the body holds {rows} rows; the limit is {max_rows} rows per request")


def predictions_json(predictions: Any) -> str:
    """The body of a successful /invocations answer, as MLflow's scoring server writes it."""
    body = StringIO()
    scoring_server.predictions_to_json(predictions, body)
    return body.getvalue()
